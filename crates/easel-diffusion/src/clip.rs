//! The CLIP text encoder (text tower of CLIP ViT-L/14) as Stable Diffusion 1.x uses it.
//!
//! Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
//! <https://arxiv.org/abs/2103.00020>. This follows transformers' `CLIPTextModel`: token plus
//! learned position embeddings, pre-norm transformer layers with a causal mask, a final layer
//! norm. Its output `[B, 77, 768]` is the UNet's cross-attention context.
//!
//! Prompt learning needs the encoder to take substituted token embeddings and to pass gradients
//! back to them: [`ClipTextModel::token_embeddings`] looks ids up, [`replace_token_embeddings`]
//! (or [`ClipTextModel::embed_with_placeholders`]) patches learnable vectors in differentiably,
//! and [`ClipTextModel::forward_embeds`] runs the transformer on the result. Every op used has
//! a backward (softmax and layer norm come from [`crate::ops`]).

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::frozen::{add, linear, Linear};

use crate::ops::{softmax_last_dim, LayerNorm};

/// The MLP activation (`hidden_act` in transformers' `CLIPTextConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (`"quick_gelu"`): the original CLIP and Stable Diffusion 1.x.
    QuickGelu,
    /// Exact, erf-based GELU (`"gelu"`).
    Gelu,
    /// Tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
}

impl ClipActivation {
    fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
        }
    }
}

/// Hyper-parameters of the CLIP text encoder (transformers' `CLIPTextConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    /// Number of token ids in the embedding table (`vocab_size`).
    pub vocab_size: usize,
    /// Width of the token states (`hidden_size`).
    pub hidden_size: usize,
    /// Number of transformer layers (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`num_attention_heads`); must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the MLP's hidden layer (`intermediate_size`).
    pub intermediate_size: usize,
    /// Rows of the position table, the longest accepted sequence (`max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// MLP activation (`hidden_act`).
    pub hidden_act: ClipActivation,
    /// Epsilon of every layer norm (`layer_norm_eps`).
    pub layer_norm_eps: f64,
    /// `eos_token_id`, which selects the pooling rule: `2` (the legacy value of the original
    /// checkpoints, SD1.x included) pools at the largest id of each sequence, anything else at
    /// the first occurrence of this id (transformers 5.23's rule, reproduced exactly).
    pub eos_token_id: u32,
}

impl ClipTextConfig {
    /// Stable Diffusion 1.x (`openai/clip-vit-large-patch14` text tower).
    pub fn sd15() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 2,
        }
    }

    /// A tiny random-weight configuration for tests (`tools/ref/clip_ref.py`): vocabulary 512
    /// (bos 406, eos 407), width 32, 2 layers of 4 heads, MLP width 37, 77 positions.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 512,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 37,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 407,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            bail!(
                "clip: hidden_size {} and num_attention_heads {} must be positive",
                self.hidden_size,
                self.num_attention_heads
            )
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "clip: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            )
        }
        if self.num_hidden_layers == 0 {
            bail!("clip: num_hidden_layers must be at least 1")
        }
        Ok(())
    }
}

/// What [`ClipTextModel::forward_embeds`] returns.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `[B, T, D]`: the last layer's states after `final_layer_norm`, the SD1.x UNet context
    /// (transformers' `last_hidden_state`).
    pub last_hidden_state: Tensor,
    /// `[B, T, D]`: raw output of the second-to-last layer, before any norm (transformers'
    /// `hidden_states[-2]`). "Clip skip 2" fine-tunes (diffusers `clip_skip=1`) condition on
    /// `final_layer_norm` of it: see [`ClipTextModel::final_layer_norm`].
    pub penultimate_hidden_state: Tensor,
    /// `[B, D]`: `last_hidden_state` at each sequence's pooling position (see
    /// [`ClipTextConfig::eos_token_id`]; transformers' `pooler_output`).
    pub pooled_output: Tensor,
}

/// A learned multi-vector token: every run of `id` in the ids takes `vectors` in order (see
/// [`replace_token_embeddings`]).
#[derive(Debug, Clone)]
pub struct Placeholder {
    /// The placeholder's token id; may lie outside the vocabulary (an added token).
    pub id: u32,
    /// `[n, D]` embeddings, typically a `candle_core::Var`'s tensor.
    pub vectors: Tensor,
}

#[derive(Debug, Clone)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(d, d, vb.pp("q_proj"))?,
            k_proj: linear(d, d, vb.pp("k_proj"))?,
            v_proj: linear(d, d, vb.pp("v_proj"))?,
            out_proj: linear(d, d, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        })
    }

    /// `[B, T, D]` -> `[B, heads, T, head_dim]`.
    fn split_heads(&self, xs: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        xs.reshape((b, t, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = self.split_heads(&(self.q_proj.forward(xs)? * scale)?, b, t)?;
        let k = self.split_heads(&self.k_proj.forward(xs)?, b, t)?;
        let v = self.split_heads(&self.v_proj.forward(xs)?, b, t)?;
        let scores = add(&q.matmul(&k.t()?)?, causal_mask)?;
        let attn = softmax_last_dim(&scores)?.matmul(&v)?;
        let attn = attn.transpose(1, 2)?.reshape((b, t, d))?;
        self.out_proj.forward(&attn)
    }
}

#[derive(Debug, Clone)]
struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl ClipMlp {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            fc1: linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("fc1"))?,
            fc2: linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("fc2"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(xs)?)?)
    }
}

#[derive(Debug, Clone)]
struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: ClipAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm1: LayerNorm::new(d, eps, vb.pp("layer_norm1"))?,
            mlp: ClipMlp::new(vb.pp("mlp"), cfg)?,
            layer_norm2: LayerNorm::new(d, eps, vb.pp("layer_norm2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, causal_mask)?;
        let xs = (xs + attn)?;
        let mlp = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        xs + mlp
    }
}

/// The CLIP text encoder (transformers' `CLIPTextModel`).
///
/// Weights load from either key layout: `text_model.embeddings.token_embedding.weight`, ...
/// (SD1.x `text_encoder/` checkpoints, written by transformers 4.x) or the same keys without
/// the `text_model.` prefix (transformers 5.x). The weights are plain tensors: gradients of a
/// loss reach only the `Var`s a caller patches in, never the model.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextModel {
    /// Loads the weights from `vb` (at the checkpoint's root; see the type's doc for keys).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        cfg.validate()?;
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let token_embedding = emb.get((cfg.vocab_size, d), "token_embedding.weight")?;
        let position_embedding = emb.get(
            (cfg.max_position_embeddings, d),
            "position_embedding.weight",
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// `[B, T]` ids (u8/u32/i64) -> `[B, T, D]` token embeddings (no position embeddings yet).
    /// Fails on an id outside `0..vocab_size`.
    pub fn token_embeddings(&self, ids: &Tensor) -> Result<Tensor> {
        self.lookup(ids, &[])
    }

    /// Token embeddings of `ids` with every placeholder's runs replaced by its vectors (see
    /// [`replace_token_embeddings`]); differentiable in the vectors. Placeholder ids may lie
    /// outside the vocabulary; any other id must lie inside it.
    pub fn embed_with_placeholders(
        &self,
        ids: &Tensor,
        placeholders: &[Placeholder],
    ) -> Result<Tensor> {
        let ph_ids: Vec<u32> = placeholders.iter().map(|p| p.id).collect();
        let mut embeds = self.lookup(ids, &ph_ids)?;
        for p in placeholders {
            embeds = replace_token_embeddings(&embeds, ids, p.id, &p.vectors)?;
        }
        Ok(embeds)
    }

    /// Looks `ids` up, reading `skip` ids as row 0 (they are replaced afterwards).
    fn lookup(&self, ids: &Tensor, skip: &[u32]) -> Result<Tensor> {
        let rows = ids_to_host(ids)?;
        let (b, t) = ids.dims2()?;
        let vocab = self.config.vocab_size;
        let mut flat = Vec::with_capacity(b * t);
        for &id in rows.iter().flatten() {
            if skip.contains(&id) {
                flat.push(0u32);
            } else if (id as usize) < vocab {
                flat.push(id);
            } else {
                bail!("clip: token id {id} is outside the vocabulary of {vocab}")
            }
        }
        let index = Tensor::from_vec(flat, b * t, self.token_embedding.device())?;
        self.token_embedding
            .index_select(&index, 0)?
            .reshape((b, t, self.config.hidden_size))
    }

    /// Runs the encoder on `[B, T]` ids; returns the last hidden state `[B, T, D]` after the
    /// final layer norm (the SD1.x UNet context).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let embeds = self.token_embeddings(ids)?;
        Ok(self.forward_embeds(&embeds, ids)?.last_hidden_state)
    }

    /// Runs the encoder on token embeddings `[B, T, D]` (from [`Self::token_embeddings`],
    /// possibly patched); position embeddings are added here. `ids` `[B, T]` are the tokens the
    /// embeddings stand for, read only to find the pooling positions. `T` may not exceed
    /// `max_position_embeddings`; `embeds` must have the model's dtype and device.
    pub fn forward_embeds(&self, embeds: &Tensor, ids: &Tensor) -> Result<ClipTextOutput> {
        let (b, t, d) = embeds.dims3()?;
        let cfg = &self.config;
        if d != cfg.hidden_size {
            bail!(
                "clip: embeddings width {d} != hidden_size {}",
                cfg.hidden_size
            )
        }
        if t == 0 || b == 0 || t > cfg.max_position_embeddings {
            bail!(
                "clip: embeddings shape {:?}: need 1 <= T <= {} and B >= 1",
                embeds.shape(),
                cfg.max_position_embeddings
            )
        }
        if ids.dims() != [b, t] {
            bail!(
                "clip: ids shape {:?} does not match embeddings shape {:?}",
                ids.shape(),
                embeds.shape()
            )
        }
        let dtype = self.token_embedding.dtype();
        if embeds.dtype() != dtype {
            bail!(
                "clip: embeddings dtype {:?} != model dtype {dtype:?}",
                embeds.dtype()
            )
        }
        let positions = self.position_embedding.narrow(0, 0, t)?;
        let mut xs = add(embeds, &positions)?;
        let mask = causal_mask(t, dtype, embeds.device())?;
        let mut penultimate = xs.clone();
        for layer in &self.layers {
            penultimate = xs;
            xs = layer.forward(&penultimate, &mask)?;
        }
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        let pooled_output = self.pool(&last_hidden_state, ids)?;
        Ok(ClipTextOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate,
            pooled_output,
        })
    }

    /// The model's final layer norm, e.g. for clip-skip conditioning on
    /// [`ClipTextOutput::penultimate_hidden_state`].
    pub fn final_layer_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(xs)
    }

    /// transformers 5.23: legacy `eos_token_id == 2` takes the (first) largest id of each row,
    /// otherwise the first occurrence of `eos_token_id` (position 0 when there is none).
    fn pool(&self, hidden: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (b, t, d) = hidden.dims3()?;
        let eos = self.config.eos_token_id;
        let rows = ids_to_host(ids)?;
        let index: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let pos = if eos == 2 {
                    // First index of the maximum, as torch.argmax.
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, 0),
                            |best, (j, &id)| if id > best.1 { (j, id) } else { best },
                        )
                        .0
                } else {
                    row.iter().position(|&id| id == eos).unwrap_or(0)
                };
                (i * t + pos) as u32
            })
            .collect();
        let index = Tensor::from_vec(index, b, hidden.device())?;
        hidden.reshape((b * t, d))?.index_select(&index, 0)
    }
}

/// `[T, T]` additive mask: 0 on and below the diagonal, -inf above.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)
}

/// `[B, T]` integer ids (u8, u32 or i64) as host rows of u32; fails on negative or too large ids.
fn ids_to_host(ids: &Tensor) -> Result<Vec<Vec<u32>>> {
    if ids.rank() != 2 {
        bail!("clip: ids must be [B, T], got shape {:?}", ids.shape())
    }
    let ids = match ids.dtype() {
        DType::U8 | DType::U32 | DType::I64 => ids.to_dtype(DType::I64)?,
        other => bail!("clip: ids must be u8, u32 or i64, got {other:?}"),
    };
    ids.to_vec2::<i64>()?
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|id| match u32::try_from(id) {
                    Ok(id) => Ok(id),
                    Err(_) => bail!("clip: token id {id} is not a valid u32"),
                })
                .collect()
        })
        .collect()
}

/// Replaces, in token embeddings `embeds` `[B, T, D]`, the rows where `ids` `[B, T]` equal
/// `placeholder_id` with rows of `vectors` `[n, D]`: the k-th id of each run of consecutive
/// placeholders takes `vectors[k % n]` (one placeholder id per vector of a multi-vector token;
/// a run cut short by truncation takes the first vectors). Built from `index_select` and
/// `where_cond`, so gradients flow into `vectors` (converted to `embeds`' dtype) and into the
/// untouched rows of `embeds` (when `embeds` is tracked; a constant gets none). Without any placeholder, returns `embeds` unchanged.
pub fn replace_token_embeddings(
    embeds: &Tensor,
    ids: &Tensor,
    placeholder_id: u32,
    vectors: &Tensor,
) -> Result<Tensor> {
    let (b, t, d) = embeds.dims3()?;
    let (n, vd) = vectors.dims2()?;
    if n == 0 || vd != d {
        bail!(
            "clip: placeholder vectors shape {:?} must be [n >= 1, {d}]",
            vectors.shape()
        )
    }
    if ids.dims() != [b, t] {
        bail!(
            "clip: ids shape {:?} does not match embeddings shape {:?}",
            ids.shape(),
            embeds.shape()
        )
    }
    let rows = ids_to_host(ids)?;
    let mut mask = Vec::with_capacity(b * t);
    let mut index = Vec::with_capacity(b * t);
    for row in &rows {
        let mut run = 0usize;
        for &id in row {
            if id == placeholder_id {
                mask.push(1u8);
                index.push((run % n) as u32);
                run += 1;
            } else {
                mask.push(0u8);
                index.push(0u32);
                run = 0;
            }
        }
    }
    if !mask.contains(&1) {
        return Ok(embeds.clone());
    }
    let device = embeds.device();
    let index = Tensor::from_vec(index, b * t, device)?;
    let patched = vectors
        .to_dtype(embeds.dtype())?
        .index_select(&index, 0)?
        .reshape((b, t, d))?;
    let mask = Tensor::from_vec(mask, (b, t, 1), device)?.broadcast_as((b, t, d))?;
    crate::frozen::where_cond(&mask, &patched, embeds)
}
