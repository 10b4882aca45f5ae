//! How a bank's `S · G · T` prompt vectors are parameterised (see [`BankParams`]).
//!
//! All three produce the vectors `[S, G, T, D]` differentiably from their [`Var`]s (f32, on the
//! text encoder's device), so an inversion trainer can optimise them through CLIP and the UNet.
//! Random initialisation uses easel's own seeded generator: a bank created with the same seed
//! is the same on every machine.
//!
//! - [`DirectParams`]: the vectors themselves (textual inversion, P+, ProSpect).
//! - [`GeneratedParams`]: a small transformer block maps the init word's embedding to all
//!   vectors (the prompt generator of LSAST, Zhang et al., "Towards Highly Realistic Artistic
//!   Style Transfer via Stable Diffusion with Step-aware and Layer-aware Prompt", IJCAI 2024,
//!   <https://arxiv.org/abs/2404.11474>).
//! - [`ImplicitParams`]: learnable bank entries read by attention with learnable queries (the
//!   Implicit Style Prompt Bank of ArtBank, Zhang et al., AAAI 2024,
//!   <https://arxiv.org/abs/2312.06135>).
//!
//! The papers give the role of these modules, not every detail; the choices made here are
//! documented on each type.

use std::collections::{BTreeMap, HashMap};

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use easel_core::rng::SplitMix64;
use easel_diffusion::frozen;
use easel_diffusion::ops::{softmax_last_dim, LayerNorm};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;

/// Layer-norm epsilon of the generator and the implicit bank.
const LN_EPS: f64 = 1e-5;

/// The parameterisation of a bank and its hyper-parameters (a preset's `[params]` table;
/// stored as JSON in bank files, e.g. `{"kind":"generated","heads":8,"mlp_ratio":1}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ParamsSpec {
    /// One learnable vector per (stage, group, token). (A struct variant without fields, so
    /// that unknown keys next to `kind = "direct"` are refused.)
    Direct {},
    /// A transformer block generating every vector from the init embedding.
    Generated {
        /// Attention heads; must divide the embedding width `D`.
        heads: usize,
        /// MLP hidden width as a multiple of `D`.
        mlp_ratio: usize,
    },
    /// Learnable bank entries read by attention.
    Implicit {
        /// Number of bank entries `K`.
        entries: usize,
    },
}

impl ParamsSpec {
    /// The name of the parameterisation: `direct`, `generated` or `implicit`.
    pub fn kind(&self) -> &'static str {
        match self {
            ParamsSpec::Direct {} => "direct",
            ParamsSpec::Generated { .. } => "generated",
            ParamsSpec::Implicit { .. } => "implicit",
        }
    }

    fn validate(&self, dim: usize) -> Result<()> {
        match *self {
            ParamsSpec::Direct {} => {}
            ParamsSpec::Generated { heads, mlp_ratio } => {
                if heads == 0 || !dim.is_multiple_of(heads) {
                    bail!("generated bank: {heads} heads do not divide the embedding width {dim}")
                }
                if mlp_ratio == 0 {
                    bail!("generated bank: mlp_ratio must be at least 1")
                }
            }
            ParamsSpec::Implicit { entries } => {
                if entries == 0 {
                    bail!("implicit bank: entries must be at least 1")
                }
            }
        }
        Ok(())
    }
}

/// The init word's token embeddings `[m, D]` (m ≥ 1 tokens of the word, no start/end tokens)
/// from which a bank starts. See each parameterisation for how several tokens are used.
#[derive(Debug, Clone)]
pub struct InitEmbedding(Tensor);

impl InitEmbedding {
    /// Wraps `rows` `[m, D]`, m ≥ 1, D ≥ 1; converted to f32.
    pub fn new(rows: Tensor) -> Result<Self> {
        let (m, d) = rows.dims2()?;
        if m == 0 || d == 0 {
            bail!(
                "init embedding must be [m >= 1, D >= 1], got {:?}",
                rows.shape()
            )
        }
        Ok(Self(rows.to_dtype(DType::F32)?.detach()))
    }

    /// The rows `[m, D]`.
    pub fn rows(&self) -> &Tensor {
        &self.0
    }

    /// The mean of the rows `[D]`.
    pub fn mean(&self) -> Result<Tensor> {
        self.0.mean(0)
    }

    /// Embedding width `D`.
    pub fn dim(&self) -> usize {
        self.0.dims()[1]
    }
}

/// A bank's learnable parameters, by parameterisation.
#[derive(Debug, Clone)]
pub enum BankParams {
    /// The vectors themselves.
    Direct(DirectParams),
    /// Vectors generated from the init embedding (LSAST).
    Generated(GeneratedParams),
    /// Vectors read from an implicit bank (ArtBank).
    Implicit(ImplicitParams),
}

impl BankParams {
    /// Fresh parameters of kind `spec` for `layout`, starting from `init`, on `device`;
    /// random parts are drawn from `seed`.
    pub fn init(
        spec: &ParamsSpec,
        layout: &Layout,
        init: &InitEmbedding,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        spec.validate(init.dim())?;
        let shape = VectorShape::new(layout, init.dim());
        let mut rng = Rng::new(seed);
        Ok(match *spec {
            ParamsSpec::Direct {} => Self::Direct(DirectParams::init(shape, init, device)?),
            ParamsSpec::Generated { heads, mlp_ratio } => Self::Generated(GeneratedParams::init(
                shape, heads, mlp_ratio, init, &mut rng, device,
            )?),
            ParamsSpec::Implicit { entries } => Self::Implicit(ImplicitParams::init(
                shape, entries, init, &mut rng, device,
            )?),
        })
    }

    /// Parameters of kind `spec` for `layout` from their saved tensors (as returned by
    /// [`Self::tensors`]); checks every name and shape and that no tensor is left over.
    pub fn from_tensors(
        spec: &ParamsSpec,
        layout: &Layout,
        dim: usize,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self> {
        spec.validate(dim)?;
        let shape = VectorShape::new(layout, dim);
        let mut store = TensorStore(tensors);
        let params = match *spec {
            ParamsSpec::Direct {} => Self::Direct(DirectParams {
                shape,
                vectors: Var::from_tensor(&store.take(DIRECT_VECTORS, &[shape.n(), dim])?)?,
            }),
            ParamsSpec::Generated { heads, mlp_ratio } => Self::Generated(
                GeneratedParams::from_store(shape, heads, mlp_ratio, &mut store)?,
            ),
            ParamsSpec::Implicit { entries } => Self::Implicit(ImplicitParams {
                shape,
                vars: store.take_vars(&ImplicitParams::var_shapes(shape, entries))?,
            }),
        };
        store.finish()?;
        Ok(params)
    }

    /// The spec (kind and hyper-parameters).
    pub fn spec(&self) -> ParamsSpec {
        match self {
            Self::Direct(_) => ParamsSpec::Direct {},
            Self::Generated(g) => ParamsSpec::Generated {
                heads: g.heads,
                mlp_ratio: g.mlp_hidden / g.shape.dim,
            },
            Self::Implicit(i) => ParamsSpec::Implicit {
                entries: i.vars[IMPLICIT_BANK].dims()[0],
            },
        }
    }

    /// Embedding width `D`.
    pub fn dim(&self) -> usize {
        self.shape().dim
    }

    /// `(S, G, T, D)`.
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        let s = self.shape();
        (s.stages, s.groups, s.tokens, s.dim)
    }

    fn shape(&self) -> VectorShape {
        match self {
            Self::Direct(p) => p.shape,
            Self::Generated(p) => p.shape,
            Self::Implicit(p) => p.shape,
        }
    }

    /// The vectors `[S, G, T, D]` (f32), differentiable in [`Self::vars`].
    pub fn vectors(&self) -> Result<Tensor> {
        let flat = match self {
            Self::Direct(p) => p.vectors.as_tensor().clone(),
            Self::Generated(p) => p.forward()?,
            Self::Implicit(p) => p.forward()?,
        };
        let s = self.shape();
        flat.reshape((s.stages, s.groups, s.tokens, s.dim))
    }

    /// The trainable variables with their names, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        match self {
            Self::Direct(p) => vec![(DIRECT_VECTORS.to_string(), p.vectors.clone())],
            Self::Generated(p) => named(&p.vars),
            Self::Implicit(p) => named(&p.vars),
        }
    }

    /// Every tensor a bank file stores for these parameters (the variables' values plus
    /// frozen buffers such as the generator's init embedding), sorted by name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().detach()))
            .collect();
        if let Self::Generated(p) = self {
            out.push((GENERATOR_INIT.to_string(), p.init_embedding.clone()));
            out.sort_by(|a, b| a.0.cmp(&b.0));
        }
        out
    }
}

fn named(vars: &BTreeMap<String, Var>) -> Vec<(String, Var)> {
    vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
}

/// Sizes of the vectors: `S`, `G`, `T`, `D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VectorShape {
    stages: usize,
    groups: usize,
    tokens: usize,
    dim: usize,
}

impl VectorShape {
    fn new(layout: &Layout, dim: usize) -> Self {
        Self {
            stages: layout.stages(),
            groups: layout.num_groups(),
            tokens: layout.tokens_per_slot(),
            dim,
        }
    }

    /// Number of vectors `S · G · T`.
    fn n(&self) -> usize {
        self.stages * self.groups * self.tokens
    }
}

const DIRECT_VECTORS: &str = "bank.vectors";

/// Direct parameters: `bank.vectors` `[S·G·T, D]`, stage-major then group then token.
///
/// Initialisation: when the init word has exactly `T` tokens, token `k` of every slot starts
/// from the word's token `k`; otherwise every vector starts from the mean of the word's token
/// embeddings (a one-token word: that token, as in textual inversion).
#[derive(Debug, Clone)]
pub struct DirectParams {
    shape: VectorShape,
    vectors: Var,
}

impl DirectParams {
    fn init(shape: VectorShape, init: &InitEmbedding, device: &Device) -> Result<Self> {
        let rows = init.rows();
        let slot = if rows.dims()[0] == shape.tokens {
            rows.clone()
        } else {
            init.mean()?
                .unsqueeze(0)?
                .broadcast_as((shape.tokens, shape.dim))?
                .contiguous()?
        };
        let all = slot
            .unsqueeze(0)?
            .broadcast_as((shape.stages * shape.groups, shape.tokens, shape.dim))?
            .reshape((shape.n(), shape.dim))?
            .to_device(device)?;
        Ok(Self {
            shape,
            vectors: Var::from_tensor(&all)?,
        })
    }

    /// The variable `[S·G·T, D]`.
    pub fn var(&self) -> &Var {
        &self.vectors
    }
}

const GENERATOR_INIT: &str = "generator.init_embedding";

/// LSAST-style prompt generator: one pre-norm transformer block over `N = S·G·T` tokens.
///
/// With `e` the mean init embedding (frozen, saved as `generator.init_embedding`) and `s` its
/// RMS (so the block works at unit scale whatever the text encoder's embedding scale):
///
/// ```text
/// x = e / s + queries                       queries: [N, D], one learnable row per vector
/// h = x + out_proj(attention(ln1(x)))       multi-head self-attention over the N tokens
/// y = h + fc2(gelu(fc1(ln2(h))))
/// vectors = s · y
/// ```
///
/// The paper specifies a generator mapping the init word to step- and layer-aware prompts;
/// this block and its initialisation are our choice. Queries start at N(0, 0.1²), so the
/// vectors start close to (not exactly at) the init word; `q/k/v_proj` and `fc1` at
/// N(0, 1/fan_in); `out_proj` and `fc2` small (N(0, (0.01² / fan_in))), so the block starts
/// near the identity yet every parameter receives gradient from the first step. Tensor names:
/// `generator.{queries, ln1.*, attn.{q,k,v,out}_proj.{weight,bias}, ln2.*, mlp.fc1.*,
/// mlp.fc2.*}` (linear weights `[out, in]`, as PyTorch).
#[derive(Debug, Clone)]
pub struct GeneratedParams {
    shape: VectorShape,
    heads: usize,
    mlp_hidden: usize,
    init_embedding: Tensor,
    vars: BTreeMap<String, Var>,
}

impl GeneratedParams {
    fn var_shapes(shape: VectorShape, mlp_hidden: usize) -> Vec<(String, Vec<usize>)> {
        let d = shape.dim;
        let mut v = vec![
            ("generator.queries".to_string(), vec![shape.n(), d]),
            ("generator.mlp.fc1.weight".to_string(), vec![mlp_hidden, d]),
            ("generator.mlp.fc1.bias".to_string(), vec![mlp_hidden]),
            ("generator.mlp.fc2.weight".to_string(), vec![d, mlp_hidden]),
            ("generator.mlp.fc2.bias".to_string(), vec![d]),
        ];
        for ln in ["ln1", "ln2"] {
            v.push((format!("generator.{ln}.weight"), vec![d]));
            v.push((format!("generator.{ln}.bias"), vec![d]));
        }
        for p in ["q", "k", "v", "out"] {
            v.push((format!("generator.attn.{p}_proj.weight"), vec![d, d]));
            v.push((format!("generator.attn.{p}_proj.bias"), vec![d]));
        }
        v
    }

    fn init(
        shape: VectorShape,
        heads: usize,
        mlp_ratio: usize,
        init: &InitEmbedding,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let d = shape.dim;
        let mlp_hidden = mlp_ratio * d;
        let mut vars = BTreeMap::new();
        // Sorted names: the draws do not depend on the order of `var_shapes`.
        let shapes: BTreeMap<_, _> = Self::var_shapes(shape, mlp_hidden).into_iter().collect();
        for (name, dims) in shapes {
            let fan_in = *dims.last().unwrap_or(&1) as f64;
            let t = if name.ends_with("ln1.weight") || name.ends_with("ln2.weight") {
                Tensor::ones(dims.as_slice(), DType::F32, device)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(dims.as_slice(), DType::F32, device)?
            } else if name == "generator.queries" {
                rng.normal(&dims, 0.1, device)?
            } else if name.contains("out_proj") || name.contains("fc2") {
                rng.normal(&dims, 0.01 / fan_in.sqrt(), device)?
            } else {
                rng.normal(&dims, 1.0 / fan_in.sqrt(), device)?
            };
            vars.insert(name, Var::from_tensor(&t)?);
        }
        Ok(Self {
            shape,
            heads,
            mlp_hidden,
            init_embedding: init.mean()?.to_device(device)?,
            vars,
        })
    }

    fn from_store(
        shape: VectorShape,
        heads: usize,
        mlp_ratio: usize,
        store: &mut TensorStore,
    ) -> Result<Self> {
        let mlp_hidden = mlp_ratio * shape.dim;
        Ok(Self {
            shape,
            heads,
            mlp_hidden,
            init_embedding: store.take(GENERATOR_INIT, &[shape.dim])?,
            vars: store.take_vars(&Self::var_shapes(shape, mlp_hidden))?,
        })
    }

    /// The frozen init embedding `[D]` the generator starts from.
    pub fn init_embedding(&self) -> &Tensor {
        &self.init_embedding
    }

    fn get(&self, name: &str) -> Result<Tensor> {
        match self.vars.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => bail!("generated bank: no parameter {name}"),
        }
    }

    fn linear(&self, xs: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.get(&format!("{name}.weight"))?;
        let b = self.get(&format!("{name}.bias"))?;
        xs.matmul(&w.t()?)?.broadcast_add(&b)
    }

    fn layer_norm(&self, xs: &Tensor, name: &str) -> Result<Tensor> {
        let weights = HashMap::from([
            ("weight".to_string(), self.get(&format!("{name}.weight"))?),
            ("bias".to_string(), self.get(&format!("{name}.bias"))?),
        ]);
        let vb = VarBuilder::from_tensors(weights, DType::F32, xs.device());
        LayerNorm::new(self.shape.dim, LN_EPS, vb)?.forward(xs)
    }

    /// `[N, D]` vectors.
    fn forward(&self) -> Result<Tensor> {
        let (n, d, h) = (self.shape.n(), self.shape.dim, self.heads);
        let e = &self.init_embedding;
        let scale = e.sqr()?.mean_all()?.sqrt()?.detach();
        // A zero init embedding has no scale to keep: work at unit scale then.
        let scale = if scale.to_scalar::<f32>()? > 0.0 {
            scale
        } else {
            Tensor::new(1f32, e.device())?
        };
        // The init embedding and its scale are constants: gradients go to the generator only.
        let x = frozen::add(
            &self.get("generator.queries")?,
            &e.broadcast_div(&scale)?.unsqueeze(0)?,
        )?;
        let xn = self.layer_norm(&x, "generator.ln1")?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((n, h, d / h))?.transpose(0, 1)?.contiguous()
        };
        let q = split(self.linear(&xn, "generator.attn.q_proj")?)?;
        let k = split(self.linear(&xn, "generator.attn.k_proj")?)?;
        let v = split(self.linear(&xn, "generator.attn.v_proj")?)?;
        let scores = (q.matmul(&k.t()?)? / ((d / h) as f64).sqrt())?;
        let attn = softmax_last_dim(&scores)?
            .matmul(&v)?
            .transpose(0, 1)?
            .reshape((n, d))?;
        let hs = (x + self.linear(&attn, "generator.attn.out_proj")?)?;
        let mlp = self
            .linear(&self.layer_norm(&hs, "generator.ln2")?, "generator.mlp.fc1")?
            .gelu_erf()?;
        let ys = (hs + self.linear(&mlp, "generator.mlp.fc2")?)?;
        frozen::mul(&ys, &scale)
    }
}

const IMPLICIT_BANK: &str = "implicit.bank";

/// ArtBank-style implicit bank: `K` learnable entries read by attention.
///
/// ```text
/// keys    = layer_norm(bank) · keyᵀ             bank: [K, D], key: [D, D]
/// weights = softmax(queries · keysᵀ / √D)       queries: [N, D], one row per vector
/// vectors = weights · bank
/// ```
///
/// Every vector is a convex combination of the bank entries, so the bank stays in the text
/// encoder's embedding space. ArtBank's Implicit Style Prompt Bank is "a set of trainable
/// parameter matrices" read through attention; its spatial-statistical self-attention (SSAM),
/// used there to speed training up, is not reproduced: this reading and its initialisation are
/// our choice. Entries start at the mean init embedding `e` plus N(0, (0.1·rms(e))²) noise,
/// queries at N(0, 1), `key` at N(0, 1/D) (unit-variance attention logits). Tensor names:
/// `implicit.{bank, queries, key.weight}`.
#[derive(Debug, Clone)]
pub struct ImplicitParams {
    shape: VectorShape,
    vars: BTreeMap<String, Var>,
}

impl ImplicitParams {
    fn var_shapes(shape: VectorShape, entries: usize) -> Vec<(String, Vec<usize>)> {
        let d = shape.dim;
        vec![
            (IMPLICIT_BANK.to_string(), vec![entries, d]),
            ("implicit.key.weight".to_string(), vec![d, d]),
            ("implicit.queries".to_string(), vec![shape.n(), d]),
        ]
    }

    fn init(
        shape: VectorShape,
        entries: usize,
        init: &InitEmbedding,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let d = shape.dim;
        let e = init.mean()?.to_device(device)?;
        let rms = e.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()? as f64;
        let noise_std = if rms > 0.0 { 0.1 * rms } else { 0.1 };
        let bank = rng
            .normal(&[entries, d], noise_std, device)?
            .broadcast_add(&e.unsqueeze(0)?)?;
        let key = rng.normal(&[d, d], 1.0 / (d as f64).sqrt(), device)?;
        let queries = rng.normal(&[shape.n(), d], 1.0, device)?;
        let vars = BTreeMap::from([
            (IMPLICIT_BANK.to_string(), Var::from_tensor(&bank)?),
            ("implicit.key.weight".to_string(), Var::from_tensor(&key)?),
            ("implicit.queries".to_string(), Var::from_tensor(&queries)?),
        ]);
        Ok(Self { shape, vars })
    }

    fn get(&self, name: &str) -> Result<Tensor> {
        match self.vars.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => bail!("implicit bank: no parameter {name}"),
        }
    }

    /// `[N, D]` vectors.
    fn forward(&self) -> Result<Tensor> {
        let d = self.shape.dim;
        let bank = self.get(IMPLICIT_BANK)?;
        let dev = bank.device();
        let norm = HashMap::from([
            (
                "weight".to_string(),
                Tensor::ones(d, DType::F32, dev)?.detach(),
            ),
            (
                "bias".to_string(),
                Tensor::zeros(d, DType::F32, dev)?.detach(),
            ),
        ]);
        let norm = LayerNorm::new(d, LN_EPS, VarBuilder::from_tensors(norm, DType::F32, dev))?;
        let keys = norm
            .forward(&bank)?
            .matmul(&self.get("implicit.key.weight")?.t()?)?;
        let scores = (self.get("implicit.queries")?.matmul(&keys.t()?)? / (d as f64).sqrt())?;
        softmax_last_dim(&scores)?.matmul(&bank)
    }
}

/// Named tensors being taken apart by `from_tensors`.
struct TensorStore(HashMap<String, Tensor>);

impl TensorStore {
    fn take(&mut self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let Some(t) = self.0.remove(name) else {
            bail!("bank file has no tensor {name}")
        };
        if t.dims() != dims {
            bail!(
                "bank tensor {name} has shape {:?}, expected {dims:?}",
                t.dims()
            )
        }
        t.to_dtype(DType::F32)
    }

    fn take_vars(&mut self, shapes: &[(String, Vec<usize>)]) -> Result<BTreeMap<String, Var>> {
        shapes
            .iter()
            .map(|(name, dims)| Ok((name.clone(), Var::from_tensor(&self.take(name, dims)?)?)))
            .collect()
    }

    fn finish(self) -> Result<()> {
        let mut left: Vec<_> = self.0.into_keys().collect();
        if !left.is_empty() {
            left.sort();
            bail!("bank file has unexpected tensors {left:?}")
        }
        Ok(())
    }
}

/// Box–Muller normals from easel's seeded generator, for initialisation (identical on every
/// platform and device).
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        self.0.unit_nonzero()
    }

    /// A tensor of `dims` with N(0, std²) entries (f32) on `device`.
    fn normal(&mut self, dims: &[usize], std: f64, device: &Device) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let a = std::f64::consts::TAU * u2;
            v.push((r * a.cos() * std) as f32);
            v.push((r * a.sin() * std) as f32);
        }
        v.truncate(n);
        Tensor::from_vec(v, dims, device)
    }
}

/// Reshapes `[S, G, T, D]` vectors to the `[T, D]` of one slot.
pub(crate) fn slot_rows(vectors: &Tensor, stage: usize, group: usize) -> Result<Tensor> {
    vectors.get(stage)?.get(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::StageMap;
    use easel_diffusion::contexts::LayerGroups;

    fn layout() -> Layout {
        Layout::new(2, LayerGroups::DownMidUp, 3, 2, StageMap::Uniform).unwrap()
    }

    #[test]
    fn init_is_seeded_and_shaped() {
        let dev = Device::Cpu;
        let init = InitEmbedding::new(
            Tensor::arange(0f32, 16., &dev)
                .unwrap()
                .reshape((2, 8))
                .unwrap(),
        )
        .unwrap();
        let specs = [
            ParamsSpec::Direct {},
            ParamsSpec::Generated {
                heads: 2,
                mlp_ratio: 2,
            },
            ParamsSpec::Implicit { entries: 5 },
        ];
        for spec in specs {
            let a = BankParams::init(&spec, &layout(), &init, 7, &dev).unwrap();
            let b = BankParams::init(&spec, &layout(), &init, 7, &dev).unwrap();
            assert_eq!(a.spec(), spec);
            let (va, vb) = (a.vectors().unwrap(), b.vectors().unwrap());
            assert_eq!(va.dims(), [2, 3, 2, 8], "{spec:?}");
            assert_eq!(
                va.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                vb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        // Direct with a 2-token word and T = 2: token k of each slot starts at word token k.
        let d = BankParams::init(&ParamsSpec::Direct {}, &layout(), &init, 0, &dev).unwrap();
        let slot = slot_rows(&d.vectors().unwrap(), 1, 2).unwrap();
        assert_eq!(
            slot.to_vec2::<f32>().unwrap(),
            init.rows().to_vec2::<f32>().unwrap()
        );
        assert!(BankParams::init(
            &ParamsSpec::Generated {
                heads: 3,
                mlp_ratio: 1
            },
            &layout(),
            &init,
            0,
            &dev
        )
        .is_err());
    }
}
