//! The UNet's attention layers, as in diffusers: multi-head (cross-)attention
//! ("Attention Is All You Need", <https://arxiv.org/abs/1706.03762>), the GEGLU feed-forward
//! ("GLU Variants Improve Transformer", <https://arxiv.org/abs/2002.05202>), the
//! `BasicTransformerBlock` (self-attention, cross-attention on the text context, feed-forward)
//! and the `Transformer2DModel` that wraps blocks around a feature map (the latent diffusion
//! paper's "SpatialTransformer", <https://arxiv.org/abs/2112.10752>).
//!
//! Everything is differentiable (softmax and layer norm come from [`crate::ops`]); in f16/bf16
//! the softmax statistics are kept in f32.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::frozen::{conv2d, group_norm, linear, linear_no_bias, Conv2d, GroupNorm, Linear};

use crate::ops::{softmax_last_dim, LayerNorm};

/// How the attention scores `softmax(QKᵀ/√d)` are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionSlicing {
    /// Materialise the whole `[B·heads, N, M]` score matrix at once: fastest, but its memory grows
    /// with the square of the token count (a 1024² image has N = 16384 latent tokens).
    #[default]
    Full,
    /// Process the queries in chunks of this many tokens, so that only `[B·heads, chunk, M]`
    /// scores exist at a time. The result is the same as [`AttentionSlicing::Full`]. For a
    /// 1024² image (N = 16384) with classifier-free guidance (B = 2) and 8 heads,
    /// `QueryChunks(1024)` keeps each chunk's f32 scores at 2·8·1024·16384·4 B ≈ 1 GiB instead
    /// of 16 GiB for the whole matrix. (Under autograd every chunk is kept for the backward
    /// pass, so slicing saves memory in inference only.)
    QueryChunks(usize),
    /// Query chunks sized at run time so that each chunk's score matrix takes at most this many
    /// bytes; the whole matrix at once when it fits. Small canvases run as fast as with
    /// [`AttentionSlicing::Full`]; large ones no longer need memory that grows with the square
    /// of the token count.
    MaxScoreBytes(u64),
}

impl AttentionSlicing {
    /// What painting uses: score matrices of at most 1 GiB, so that a 512² canvas (1 GiB of
    /// scores with guidance) runs in one chunk, 768² in six and 1024² in 16 (see
    /// [`AttentionSlicing::QueryChunks`]).
    pub const PAINTING: Self = Self::MaxScoreBytes(1 << 30);

    /// The queries handled at once among `queries`, for `rows` (`batch · heads`) score matrices
    /// of `keys` columns with `elem_bytes`-byte elements.
    pub fn chunk_len(self, rows: usize, queries: usize, keys: usize, elem_bytes: usize) -> usize {
        match self {
            Self::Full => queries,
            Self::QueryChunks(chunk) => chunk.clamp(1, queries.max(1)),
            Self::MaxScoreBytes(budget) => {
                let per_query = (rows as u64)
                    .saturating_mul(keys as u64)
                    .saturating_mul(elem_bytes as u64)
                    .max(1);
                let fit = usize::try_from(budget / per_query).unwrap_or(usize::MAX);
                fit.clamp(1, queries.max(1))
            }
        }
    }
}

/// diffusers' `Attention` with the default processor: `to_q`, `to_k`, `to_v` (no bias) and
/// `to_out.0` (with bias). Self-attention when called without a context.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
    slicing: AttentionSlicing,
}

impl CrossAttention {
    /// Loads an attention layer over `query_dim` features with `heads × head_dim` inner width;
    /// keys and values are projected from `context_dim` features (`None`: self-attention,
    /// `query_dim`).
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
        slicing: AttentionSlicing,
    ) -> Result<Self> {
        if heads == 0 || head_dim == 0 {
            candle_core::bail!(
                "CrossAttention: heads ({heads}) and head_dim ({head_dim}) must be positive"
            )
        }
        if matches!(
            slicing,
            AttentionSlicing::QueryChunks(0) | AttentionSlicing::MaxScoreBytes(0)
        ) {
            candle_core::bail!("CrossAttention: a query chunk size of 0")
        }
        let inner = heads * head_dim;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            slicing,
        })
    }

    /// `[B, N, C] → [B·heads, N, head_dim]`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, tokens, _) = xs.dims3()?;
        xs.reshape((batch, tokens, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch * self.heads, tokens, self.head_dim))
    }

    /// `[B·heads, N, head_dim] → [B, N, heads·head_dim]`.
    fn merge_heads(&self, xs: &Tensor, batch: usize) -> Result<Tensor> {
        let tokens = xs.dim(1)?;
        xs.reshape((batch, self.heads, tokens, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, tokens, self.heads * self.head_dim))
    }

    /// `softmax(q kᵀ) v` for pre-scaled `q`.
    fn scores_times_values(q: &Tensor, k_t: &Tensor, v: &Tensor) -> Result<Tensor> {
        crate::frozen::matmul(&softmax_last_dim(&crate::frozen::matmul(q, k_t)?)?, v)
    }

    /// Attends from `xs` `[B, N, query_dim]` to `context` `[B, M, context_dim]` (or to `xs`
    /// itself when `None`) and returns `[B, N, query_dim]`.
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        let context = context.unwrap_or(xs);
        if context.dim(0)? != batch {
            candle_core::bail!(
                "CrossAttention: context batch {:?} differs from the hidden states' {:?}",
                context.shape(),
                xs.shape()
            )
        }
        let q_proj = self.to_q.forward(xs)?;
        if q_proj.device().is_cpu()
            && q_proj.dtype() == DType::F32
            && !q_proj.track_op()
            && !context.track_op()
        {
            // f32 CPU inference: easel-cpu's fused kernel reads the heads in place from the
            // projections' `[B, tokens, heads · head_dim]` and never stores a score matrix.
            let k = self.to_k.forward(context)?.contiguous()?;
            let v = self.to_v.forward(context)?.contiguous()?;
            let fused = easel_cpu::FusedAttention {
                heads: self.heads,
                scale: self.scale as f32,
            };
            let out = q_proj.contiguous()?.apply_op3_no_bwd(&k, &v, &fused)?;
            return self.to_out.forward(&out);
        }
        let q = (self.split_heads(&q_proj)? * self.scale)?;
        let k_t = self
            .split_heads(&self.to_k.forward(context)?)?
            .transpose(1, 2)?
            .contiguous()?;
        let v = self
            .split_heads(&self.to_v.forward(context)?)?
            .contiguous()?;
        let q = q.contiguous()?;
        let (rows, tokens, _) = q.dims3()?;
        let keys = k_t.dim(2)?;
        let chunk = self
            .slicing
            .chunk_len(rows, tokens, keys, q.dtype().size_in_bytes());
        let out = match chunk {
            chunk if chunk < tokens => {
                let mut parts = Vec::with_capacity(tokens.div_ceil(chunk));
                let mut start = 0;
                while start < tokens {
                    let len = chunk.min(tokens - start);
                    let q = q.narrow(1, start, len)?;
                    parts.push(Self::scores_times_values(&q, &k_t, &v)?);
                    start += len;
                }
                Tensor::cat(&parts, 1)?
            }
            _ => Self::scores_times_values(&q, &k_t, &v)?,
        };
        self.to_out.forward(&self.merge_heads(&out, batch)?)
    }
}

/// diffusers' `FeedForward` with the GEGLU activation: `net.0.proj` (`dim → 2·4·dim`), the
/// value half times the exact GELU of the gate half, then `net.2` (`4·dim → dim`).
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
    inner: usize,
}

impl FeedForward {
    /// Loads a feed-forward layer of width `dim` (inner width `4·dim`).
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj_in: linear(dim, 2 * inner, vb.pp("net").pp("0").pp("proj"))?,
            proj_out: linear(inner, dim, vb.pp("net").pp("2"))?,
            inner,
        })
    }

    /// Applies the layer to `[B, N, dim]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hs = self.proj_in.forward(xs)?;
        let value = hs.narrow(D::Minus1, 0, self.inner)?;
        let gate = hs.narrow(D::Minus1, self.inner, self.inner)?;
        self.proj_out.forward(&(value * gate.gelu_erf()?)?)
    }
}

/// diffusers' `BasicTransformerBlock` (layer-norm variant): pre-norm self-attention (`attn1`),
/// cross-attention on the context (`attn2`) and GEGLU feed-forward (`ff`), each residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// Loads a block of width `dim = heads × head_dim` attending to `context_dim`-wide contexts.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        head_dim: usize,
        context_dim: usize,
        slicing: AttentionSlicing,
    ) -> Result<Self> {
        let eps = 1e-5;
        Ok(Self {
            norm1: LayerNorm::new(dim, eps, vb.pp("norm1"))?,
            attn1: CrossAttention::new(vb.pp("attn1"), dim, None, heads, head_dim, slicing)?,
            norm2: LayerNorm::new(dim, eps, vb.pp("norm2"))?,
            attn2: CrossAttention::new(
                vb.pp("attn2"),
                dim,
                Some(context_dim),
                heads,
                head_dim,
                slicing,
            )?,
            norm3: LayerNorm::new(dim, eps, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// Applies the block to tokens `[B, N, dim]` with the context `[B, M, context_dim]`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let attended = self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context))?;
        let xs = crate::frozen::add(&attended, &xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// Configuration of a [`Transformer2DModel`] (the arguments diffusers' UNet blocks pass).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transformer2DModelConfig {
    /// Number of attention heads; the head width is `channels / num_attention_heads`.
    pub num_attention_heads: usize,
    /// Number of [`BasicTransformerBlock`]s (`transformer_layers_per_block`; 1 in SD 1.x).
    pub num_layers: usize,
    /// Width of the context (`cross_attention_dim`; 768 for SD 1.x's CLIP ViT-L/14).
    pub cross_attention_dim: usize,
    /// Groups of the input group norm.
    pub norm_num_groups: usize,
    /// `proj_in` / `proj_out` are linear layers (SD 2.x) instead of 1×1 convolutions (SD 1.x).
    pub use_linear_projection: bool,
    /// How attention scores are evaluated.
    pub slicing: AttentionSlicing,
}

#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` for continuous inputs: group norm (eps 1e-6), `proj_in`,
/// [`BasicTransformerBlock`]s over the `H·W` tokens, `proj_out`, plus the input.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
    context_dim: usize,
}

impl Transformer2DModel {
    /// Loads a transformer over `channels`-channel feature maps from `vb`.
    pub fn new(vb: VarBuilder, channels: usize, cfg: Transformer2DModelConfig) -> Result<Self> {
        let heads = cfg.num_attention_heads;
        if heads == 0 || !channels.is_multiple_of(heads) {
            candle_core::bail!(
                "Transformer2DModel: {channels} channels are not divisible into {heads} heads"
            )
        }
        let head_dim = channels / heads;
        let norm = group_norm(cfg.norm_num_groups, channels, 1e-6, vb.pp("norm"))?;
        let projection = |name: &str| -> Result<Projection> {
            Ok(if cfg.use_linear_projection {
                Projection::Linear(linear(channels, channels, vb.pp(name))?)
            } else {
                Projection::Conv(conv2d(
                    channels,
                    channels,
                    1,
                    Conv2dConfig::default(),
                    vb.pp(name),
                )?)
            })
        };
        let proj_in = projection("proj_in")?;
        let proj_out = projection("proj_out")?;
        let transformer_blocks = (0..cfg.num_layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i.to_string()),
                    channels,
                    heads,
                    head_dim,
                    cfg.cross_attention_dim,
                    cfg.slicing,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm,
            proj_in,
            transformer_blocks,
            proj_out,
            context_dim: cfg.cross_attention_dim,
        })
    }

    /// Applies the transformer to `xs` `[B, C, H, W]` attending to `context`
    /// `[B, M, cross_attention_dim]`; returns `[B, C, H, W]`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        match context.dims() {
            [b, _, d] if *b == batch && *d == self.context_dim => {}
            dims => candle_core::bail!(
                "Transformer2DModel: context must be [{batch}, tokens, {}], got {dims:?}",
                self.context_dim
            ),
        }
        let hs = self.norm.forward(xs)?;
        let to_tokens = |hs: Tensor| -> Result<Tensor> {
            hs.permute((0, 2, 3, 1))?
                .reshape((batch, height * width, channels))
        };
        let mut hs = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&hs)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(hs)?)?,
        };
        for block in &self.transformer_blocks {
            hs = block.forward(&hs, context)?;
        }
        let to_map = |hs: Tensor| -> Result<Tensor> {
            hs.reshape((batch, height, width, channels))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let hs = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(hs)?)?,
            Projection::Linear(lin) => to_map(lin.forward(&hs)?)?,
        };
        crate::frozen::add(&hs, xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_abs_diff;
    use candle_core::{DType, Device, Var};
    use std::collections::HashMap;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        // A fixed pseudo-random pattern (no RNG state shared between tests).
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn attention(slicing: AttentionSlicing) -> CrossAttention {
        let (dim, ctx, heads, head_dim) = (12, 6, 3, 4);
        let mut weights = HashMap::new();
        weights.insert("to_q.weight".to_string(), randn(&[12, dim], 1));
        weights.insert("to_k.weight".to_string(), randn(&[12, ctx], 2));
        weights.insert("to_v.weight".to_string(), randn(&[12, ctx], 3));
        weights.insert("to_out.0.weight".to_string(), randn(&[dim, 12], 4));
        weights.insert("to_out.0.bias".to_string(), randn(&[dim], 5));
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        CrossAttention::new(vb, dim, Some(ctx), heads, head_dim, slicing).unwrap()
    }

    #[test]
    fn score_budgets_become_query_chunks() {
        let budget = AttentionSlicing::MaxScoreBytes(1000);
        assert_eq!(budget.chunk_len(6, 37, 5, 4), 8);
        // A budget below one query's scores still makes progress, one query at a time.
        assert_eq!(budget.chunk_len(6, 37, 500, 4), 1);
        // SD 1.x with guidance, 2·8 rows in f32: 512² (4096 tokens) is 1 GiB of scores, one
        // chunk; 768² (9216) is 5.1 GiB, 1820 queries a chunk; 1024² (16384) 16 GiB, 1024.
        assert_eq!(
            AttentionSlicing::PAINTING.chunk_len(16, 4096, 4096, 4),
            4096
        );
        assert_eq!(
            AttentionSlicing::PAINTING.chunk_len(16, 9216, 9216, 4),
            1820
        );
        assert_eq!(
            AttentionSlicing::PAINTING.chunk_len(16, 16384, 16384, 4),
            1024
        );
        assert_eq!(AttentionSlicing::PAINTING.chunk_len(16, 64, 77, 4), 64);
        assert_eq!(AttentionSlicing::Full.chunk_len(16, 4096, 4096, 4), 4096);
        assert_eq!(
            AttentionSlicing::QueryChunks(10_000).chunk_len(1, 37, 5, 4),
            37
        );
    }

    /// f32 CPU inference takes easel-cpu's fused kernel: the same output as candle's ops (run
    /// here by making the context trackable), for self- and cross-attention.
    #[test]
    fn fused_cpu_attention_matches_candle_ops() {
        let layer = attention(AttentionSlicing::Full);
        let xs = randn(&[2, 37, 12], 6);
        let context = randn(&[2, 5, 6], 7);
        let fused = layer.forward(&xs, Some(&context)).unwrap();
        let tracked = Var::from_tensor(&context).unwrap();
        let ops = layer.forward(&xs, Some(tracked.as_tensor())).unwrap();
        assert!(max_abs_diff(&fused, &ops) <= 1e-5);
        let mut weights = HashMap::new();
        for (i, name) in ["to_q", "to_k", "to_v"].into_iter().enumerate() {
            weights.insert(format!("{name}.weight"), randn(&[12, 12], i as u64 + 1));
        }
        weights.insert("to_out.0.weight".to_string(), randn(&[12, 12], 4));
        weights.insert("to_out.0.bias".to_string(), randn(&[12], 5));
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let own = CrossAttention::new(vb, 12, None, 3, 4, AttentionSlicing::Full).unwrap();
        let fused = own.forward(&xs, None).unwrap();
        let tracked = Var::from_tensor(&xs).unwrap();
        let ops = own.forward(tracked.as_tensor(), None).unwrap();
        assert!(max_abs_diff(&fused, &ops) <= 1e-5);
    }

    /// Query chunks (with a ragged last chunk) give the full path's output and gradients.
    #[test]
    fn sliced_attention_matches_full_with_gradients() {
        let xs = randn(&[2, 37, 12], 6);
        let context = Var::from_tensor(&randn(&[2, 5, 6], 7)).unwrap();
        let run = |slicing| {
            let out = attention(slicing)
                .forward(&xs, Some(context.as_tensor()))
                .unwrap();
            let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (out, grads.get(context.as_tensor()).unwrap().clone())
        };
        let (full, full_grad) = run(AttentionSlicing::Full);
        // B·heads = 6 score rows of 5 keys in f32: 120 bytes a query, so 1000 bytes hold 8.
        for slicing in [
            AttentionSlicing::QueryChunks(8),
            AttentionSlicing::MaxScoreBytes(1000),
        ] {
            let (sliced, sliced_grad) = run(slicing);
            assert!(max_abs_diff(&full, &sliced) <= 1e-5, "{slicing:?}");
            assert!(
                max_abs_diff(&full_grad, &sliced_grad) <= 1e-4,
                "{slicing:?}"
            );
        }
        assert!(attention(AttentionSlicing::Full)
            .forward(&xs, Some(&randn(&[1, 5, 6], 8)))
            .is_err());
    }
}
