//! The gradient of a picture's features to the picture by candle's autograd: what a perceptual
//! network falls back on where it has no hand-written backward (other devices than the CPU, or a
//! network without one).

use candle_core::{bail, DType, Result, Tensor, Var};
use easel_cpu::elementwise;

/// The sum, as one f32 vector, of the gradients in `grads` given for `layer` (`layers[i]` is the
/// layer of `grads[i]`; a layer may be asked for more than once), each checked to have the
/// feature's shape `dims`; `None` when none is given. `name` names the layer in errors.
pub(crate) fn summed_gradient<L: PartialEq>(
    layers: &[L],
    grads: &[Option<Tensor>],
    layer: &L,
    dims: &[usize],
    name: &str,
) -> Result<Option<Vec<f32>>> {
    let mut acc: Option<Vec<f32>> = None;
    for (l, g) in layers.iter().zip(grads) {
        let Some(g) = g.as_ref().filter(|_| l == layer) else {
            continue;
        };
        if g.dims() != dims {
            bail!(
                "backward: the gradient of {name} has shape {:?}, the feature {dims:?}",
                g.dims()
            )
        }
        let v = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        match &mut acc {
            Some(a) => elementwise::add_assign(a, &v),
            None => acc = Some(v),
        }
    }
    Ok(acc)
}

/// A forward pass recorded for candle's autograd.
#[derive(Debug)]
pub struct AutogradTape {
    x: Var,
    feats: Vec<Tensor>,
}

impl AutogradTape {
    /// Runs `forward` on a differentiable f32 copy of `x`; returns its features and the tape.
    pub fn record(
        x: &Tensor,
        forward: impl FnOnce(&Tensor) -> Result<Vec<Tensor>>,
    ) -> Result<(Vec<Tensor>, Self)> {
        let x = Var::from_tensor(&x.to_dtype(DType::F32)?)?;
        let feats = forward(x.as_tensor())?;
        Ok((feats.clone(), Self { x, feats }))
    }

    /// The gradient of a scalar loss to `x`, given its gradients to each feature (same order and
    /// shapes; `None` for a feature the loss does not use).
    pub fn backward(&self, grads: &[Option<Tensor>]) -> Result<Tensor> {
        if grads.len() != self.feats.len() {
            bail!(
                "backward: {} gradients for {} features",
                grads.len(),
                self.feats.len()
            )
        }
        let mut total: Option<Tensor> = None;
        for (f, g) in self.feats.iter().zip(grads) {
            if let Some(g) = g {
                if g.dims() != f.dims() {
                    bail!(
                        "backward: a gradient of shape {:?} for a feature of shape {:?}",
                        g.dims(),
                        f.dims()
                    )
                }
                // d/dx Σ f·g with g held constant is the chain rule's sum over the features.
                let term = (f * g.to_dtype(DType::F32)?.detach())?.sum_all()?;
                total = Some(match total {
                    Some(t) => (t + term)?,
                    None => term,
                });
            }
        }
        let Some(total) = total else {
            return self.x.zeros_like();
        };
        let store = total.backward()?;
        match store.get(self.x.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => self.x.zeros_like(),
        }
    }
}
