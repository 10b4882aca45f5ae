//! The authors' own checkpoints of LSAST and ArtBank (`embeddings_gs-*.pt`) as banks, read as
//! data: nothing in them is executed.
//!
//! Both official codes (github.com/Jamie-Cheung/LSAST and Jamie-Cheung/ArtBank,
//! `ldm/modules/embedding_manager.py`) save their prompt generator with `torch.save` of the
//! module objects themselves, so the file is a pickle naming the authors' classes. It is read by
//! [`easel_core::torch_checkpoint::read_module_checkpoint`], which accepts exactly the classes
//! listed here ([`OFFICIAL_CLASSES`]) and refuses any other global.
//!
//! - **LSAST** (Zhang et al., IJCAI 2024, <https://arxiv.org/abs/2404.11474>):
//!   `{"attention": TransformerBlock, "initial_embeddings": [1, D]}`. The generator runs on the
//!   init token `x` (one position): `x = attn1(norm1 x) + x; x = attn2(norm2 x, context = init)
//!   + x; out = ff(norm3 x)` (no residual after the feed-forward; `ff` = GEGLU `proj`, exact
//!   GELU, then `Linear(4D, 30 D)`), viewed as 30 vectors; stage `k` reads `cond[k:k+3]`, so
//!   the bank has the `lsast-official` layout (windows).
//! - **ArtBank** (Zhang et al., AAAI 2024, <https://arxiv.org/abs/2312.06135>):
//!   `{"string_to_token", "attention": Attentions, "learnable_vector": [1, 1, D]}`:
//!   `out = net(attn2(attn1 v, context = v))`, `net` = Dropout + `Linear(D, D)`: one vector for
//!   every stage and layer (the `artbank` layout).
//!
//! Attention over a single position is exact without queries and keys: the softmax of one score
//! is 1, so `attn(x, context) = to_out(to_v(context))`. The query and key weights are still
//! checked for their shapes. The vectors are computed as the official code does in eval mode
//! (dropout off); LayerNorm uses PyTorch's default epsilon, which the official code keeps.

use std::collections::HashMap;

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear};
use easel_core::torch_checkpoint::read_module_checkpoint;
use easel_diffusion::contexts::CrossAttentionLayout;

use crate::bank::Bank;
use crate::params::{BankParams, ParamsSpec};
use crate::preset::Preset;

/// Every class an official checkpoint's pickle may name: the authors' modules and the
/// `torch.nn` layers inside them.
pub const OFFICIAL_CLASSES: &[&str] = &[
    "ldm.modules.embedding_manager.TransformerBlock",
    "ldm.modules.embedding_manager.Attentions",
    "ldm.modules.attention.CrossAttention",
    "ldm.modules.attention.FeedForward",
    "ldm.modules.attention.GEGLU",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.normalization.LayerNorm",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.container.Sequential",
];

/// PyTorch's `nn.LayerNorm` default, which the official blocks use.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Which official code wrote a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfficialKind {
    /// LSAST's 30-vector generator.
    Lsast,
    /// ArtBank's one learned vector.
    ArtBank,
}

impl OfficialKind {
    /// The built-in preset whose layout, prompt and inference defaults the bank takes.
    pub fn preset(self) -> &'static str {
        match self {
            OfficialKind::Lsast => "lsast-official",
            OfficialKind::ArtBank => "artbank",
        }
    }
}

/// An official checkpoint turned into a bank.
#[derive(Debug, Clone)]
pub struct OfficialBank {
    /// The bank: the vectors the official generator computes, as direct parameters, in the
    /// layout of [`OfficialKind::preset`], with its prompt template and placeholder.
    pub bank: Bank,
    /// Which code wrote the file.
    pub kind: OfficialKind,
    /// The preset the bank follows (its inference defaults are the bank's).
    pub preset: Preset,
}

/// Reads the tensors of a `torch.save` file as the official checkpoints need it: dicts,
/// tensors and the module classes of [`OFFICIAL_CLASSES`], nothing else (`source` names it in
/// errors).
pub fn read_torch_save(bytes: &[u8], source: &str) -> Result<HashMap<String, Tensor>> {
    Ok(read_module_checkpoint(bytes, source, OFFICIAL_CLASSES)?
        .into_iter()
        .collect())
}

/// Which official code wrote the checkpoint whose tensors are `tensors`, if any.
pub fn official_kind(tensors: &HashMap<String, Tensor>) -> Option<OfficialKind> {
    if tensors.contains_key("initial_embeddings") {
        Some(OfficialKind::Lsast)
    } else if tensors.contains_key("learnable_vector") {
        Some(OfficialKind::ArtBank)
    } else {
        None
    }
}

/// Reads an official LSAST or ArtBank checkpoint (`source` names it in errors) and computes its
/// vectors on `device`.
pub fn import_official(bytes: &[u8], source: &str, device: &Device) -> Result<OfficialBank> {
    import_official_tensors(read_torch_save(bytes, source)?, source, device)
}

/// [`import_official`] of the tensors [`read_torch_save`] read.
pub fn import_official_tensors(
    tensors: HashMap<String, Tensor>,
    source: &str,
    device: &Device,
) -> Result<OfficialBank> {
    let Some(kind) = official_kind(&tensors) else {
        let mut keys: Vec<_> = tensors.keys().cloned().collect();
        keys.sort();
        bail!(
            "{source}: neither an LSAST checkpoint (initial_embeddings) nor an ArtBank one \
             (learnable_vector); it holds {}",
            keys.join(", ")
        )
    };
    let mut weights = Weights {
        tensors,
        source,
        device,
    };
    let vectors = match kind {
        OfficialKind::Lsast => lsast_vectors(&mut weights)?,
        OfficialKind::ArtBank => artbank_vector(&mut weights)?,
    };
    // ArtBank's placeholder token id is the only other entry; nothing else may be left.
    weights
        .tensors
        .retain(|k, _| !k.starts_with("string_to_token."));
    if !weights.tensors.is_empty() {
        let mut left: Vec<_> = weights.tensors.into_keys().collect();
        left.sort();
        bail!(
            "{source}: tensors {} are not part of the official {kind:?} generator",
            left.join(", ")
        )
    }
    if vectors
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?
        .is_nan()
    {
        bail!("{source}: the generator's vectors contain NaN")
    }

    let preset = Preset::builtin(kind.preset())?;
    // The official models are SD 1.x: 16 cross-attention layers (6 down, 1 mid, 9 up).
    let sd1 = CrossAttentionLayout {
        down: 6,
        mid: 1,
        up: 9,
    };
    let layout = preset.layout.resolve(&sd1)?;
    let needed = layout.num_vectors();
    let made = vectors.dim(0)?;
    if made != needed {
        bail!(
            "{source}: the generator makes {made} vectors, but the {} layout reads {needed}",
            preset.name
        )
    }
    let dim = vectors.dim(1)?;
    let params = BankParams::from_tensors(
        &ParamsSpec::Direct {},
        &layout,
        dim,
        HashMap::from([("bank.vectors".to_string(), vectors)]),
    )?;
    let bank = Bank::new(layout, params, preset.prompt.clone(), String::new())?;
    Ok(OfficialBank { bank, kind, preset })
}

/// The checkpoint's tensors, taken one by one with their shapes checked.
struct Weights<'a> {
    tensors: HashMap<String, Tensor>,
    source: &'a str,
    device: &'a Device,
}

impl Weights<'_> {
    /// Removes tensor `key`, checked to have `shape`, as f32 on the device.
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let Some(t) = self.tensors.remove(key) else {
            bail!(
                "{}: missing tensor {key} (expected shape {shape:?})",
                self.source
            )
        };
        if t.dims() != shape {
            bail!(
                "{}: tensor {key} has shape {:?}, expected {shape:?}",
                self.source,
                t.dims()
            )
        }
        t.to_dtype(DType::F32)?.to_device(self.device)
    }

    /// The row count of 2-d tensor `key` (an output width), without taking it.
    fn rows(&self, key: &str) -> Result<usize> {
        match self.tensors.get(key).map(|t| t.dims()) {
            Some(&[rows, _]) => Ok(rows),
            Some(dims) => bail!(
                "{}: tensor {key} has shape {dims:?}, expected a matrix",
                self.source
            ),
            None => bail!("{}: missing tensor {key}", self.source),
        }
    }

    fn linear(&mut self, key: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = self.take(&format!("{key}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(self.take(&format!("{key}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }

    fn layer_norm(&mut self, key: &str, dim: usize) -> Result<LayerNorm> {
        let weight = self.take(&format!("{key}.weight"), &[dim])?;
        let bias = self.take(&format!("{key}.bias"), &[dim])?;
        Ok(LayerNorm::new(weight, bias, LAYER_NORM_EPS))
    }

    /// ldm's `CrossAttention` at `key` over one position: `to_out(to_v(context))` (see the
    /// module docs); the query and key projections are checked and dropped.
    fn single_position_attention(&mut self, key: &str, dim: usize) -> Result<Linear2> {
        let inner = self.rows(&format!("{key}.to_v.weight"))?;
        self.take(&format!("{key}.to_q.weight"), &[inner, dim])?;
        self.take(&format!("{key}.to_k.weight"), &[inner, dim])?;
        let to_v = self.linear(&format!("{key}.to_v"), inner, dim, false)?;
        let to_out = self.linear(&format!("{key}.to_out.0"), dim, inner, true)?;
        Ok(Linear2(to_v, to_out))
    }
}

/// Two linear maps in a row.
struct Linear2(Linear, Linear);

impl Linear2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.1.forward(&self.0.forward(x)?)
    }
}

/// The init embedding `[1, D]` of an official checkpoint's `key` (`[1, D]` or `[1, 1, D]`).
fn one_vector(w: &mut Weights<'_>, key: &str) -> Result<Tensor> {
    let Some(t) = w.tensors.get(key) else {
        bail!("{}: missing tensor {key}", w.source)
    };
    let dim = *t.dims().last().unwrap_or(&0);
    let shape = match t.rank() {
        3 => vec![1, 1, dim],
        _ => vec![1, dim],
    };
    if dim == 0 {
        bail!("{}: tensor {key} is empty", w.source)
    }
    w.take(key, &shape)?.reshape((1, dim))
}

/// LSAST's generator: `[N, D]` vectors from `attention.*` and `initial_embeddings`.
fn lsast_vectors(w: &mut Weights<'_>) -> Result<Tensor> {
    let init = one_vector(w, "initial_embeddings")?;
    let dim = init.dim(1)?;
    let norm1 = w.layer_norm("attention.norm1", dim)?;
    // Checked only: norm2 feeds attn2's query, which one position does not use.
    w.layer_norm("attention.norm2", dim)?;
    let norm3 = w.layer_norm("attention.norm3", dim)?;
    let attn1 = w.single_position_attention("attention.attn1", dim)?;
    let attn2 = w.single_position_attention("attention.attn2", dim)?;
    let proj_rows = w.rows("attention.ff.net.0.proj.weight")?;
    if proj_rows % 2 != 0 {
        bail!(
            "{}: attention.ff.net.0.proj.weight has {proj_rows} rows; a GEGLU needs an even \
             number",
            w.source
        )
    }
    let inner = proj_rows / 2;
    let proj = w.linear("attention.ff.net.0.proj", proj_rows, dim, true)?;
    let out_width = w.rows("attention.ff.net.2.weight")?;
    if out_width == 0 || out_width % dim != 0 {
        bail!(
            "{}: attention.ff.net.2.weight has {out_width} rows, not a multiple of the width \
             {dim}",
            w.source
        )
    }
    let out = w.linear("attention.ff.net.2", out_width, inner, true)?;

    // attn1 is a self-attention; its output ignores norm1's query (one position).
    let x = (attn1.forward(&norm1.forward(&init)?)? + &init)?;
    // attn2 attends to the init embedding.
    let x = (attn2.forward(&init)? + x)?;
    let h = proj.forward(&norm3.forward(&x)?)?;
    let (value, gate) = (h.narrow(1, 0, inner)?, h.narrow(1, inner, inner)?);
    let h = (value * gate.gelu_erf()?)?;
    out.forward(&h)?.reshape((out_width / dim, dim))
}

/// ArtBank's one vector `[1, D]` from `attention.*` and `learnable_vector`.
fn artbank_vector(w: &mut Weights<'_>) -> Result<Tensor> {
    let v = one_vector(w, "learnable_vector")?;
    let dim = v.dim(1)?;
    // attn1's output is only attn2's query, which a single position does not use.
    w.single_position_attention("attention.attn1", dim)?;
    let attn2 = w.single_position_attention("attention.attn2", dim)?;
    let net = w.linear("attention.net.1", dim, dim, true)?;
    net.forward(&attn2.forward(&v)?)
}
