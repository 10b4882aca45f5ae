//! StyTr²: style transfer with transformers.
//!
//! Yingying Deng, Fan Tang, Weiming Dong, Chongyang Ma, Xingjia Pan, Lei Wang, Changsheng Xu,
//! "StyTr²: Image Style Transfer with Transformers", CVPR 2022,
//! <https://arxiv.org/abs/2105.14576>; port of diyiiyiii/StyTR-2 (`models/StyTR.py`,
//! `models/transformer.py`) in eval mode:
//!
//! 1. patch embedding: an 8×8 stride-8 conv from RGB in [0, 1] to `d_model` (512) channels, one
//!    token per patch, for the photo and for the painting;
//! 2. content encoder and style encoder, 3 post-norm layers each (self-attention with 8 heads,
//!    ReLU feed-forward of 2048, LayerNorm after each residual); the content tokens carry a
//!    positional encoding added to queries and keys, the style tokens none;
//! 3. decoder, 3 layers: content tokens (plus their positional encoding) query the encoded style
//!    twice per layer, then feed-forward; a final LayerNorm. Quirk of the published layer, kept
//!    because the weights were trained with it: its first block is named `self_attn` but takes
//!    keys and values from the style memory (`self_attn(tgt + query_pos, memory, memory)`), so
//!    both attention blocks are cross-attention to the style;
//! 4. the CNN decoder (the AdaIN decoder, [`crate::adain::Decoder`]): tokens as a `[d, h, w]`
//!    map → RGB at 8× the size, not clamped.
//!
//! Positional encodings ([`PositionalEncoding`]): the published content-aware CAPE, or easel's
//! pyramidal encoding after PyramidStyler; see [`crate::stytr_pe`].
//!
//! Weights: the state dicts of the public checkpoints load as they are, through
//! [`easel_core::torch_checkpoint::read_torch_checkpoint`]: `transformer_iter_*.pth`
//! (`encoder_c.layers.{i}.self_attn.in_proj_weight`, … `decoder.norm.bias`, `new_ps.weight`),
//! `embedding_iter_*.pth` (`proj.weight`, `proj.bias`) and `decoder_iter_*.pth` (`1.weight` …
//! `28.bias`).
//!
//! Sizes: any `H×W` (sides ≥ 9; style sides ≥ 8), any aspect ratio, style and photo of different
//! sizes. [`StyTr::stylize`] reflection-pads each image at the bottom/right to a multiple of 8,
//! runs the network and crops the result back. The published code only takes square inputs of
//! equal size (it reshapes the output with `int(sqrt(N))` and interpolates CAPE to the style's
//! size); easel uses the true token grid.
//!
//! Memory: attention never materialises the full score matrix. On the candle path (see below)
//! queries are processed in chunks of `⌊max_attention_scores / (B · heads · S)⌋` (at least 1) for `S` keys, so the scores and
//! their softmax hold at most `2 · max(max_attention_scores, B · heads · S)` floats at a time
//! (default `max_attention_scores` 2²⁴: ≤ 128 MiB; a 1024×1024 photo with a 1024×1024 style,
//! 16384 tokens each, would need 8 GiB per attention unchunked). The rest is linear in the
//! number of tokens (the largest buffer is the feed-forward's `tokens × 2048` floats).
//!
//! On the CPU in f32 the inference path runs each attention as one fused kernel
//! ([`easel_cpu::attention`]: score tiles in cache, online softmax, no score matrix; its memory
//! is a few tiles per thread), candle's fused LayerNorm, and the CNN decoder ([`adain::Decoder`])
//! on easel-cpu's direct convolution. On CUDA, and wherever a tensor tracks gradients (training
//! with `Var` weights), the same forward takes candle ops (matmul, softmax, chunked queries), so
//! it can be trained with candle's autograd.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! use easel_core::torch_checkpoint::read_torch_checkpoint;
//! use easel_fast::stytr::{Config, StyTr};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let load = |path: &str| -> candle_core::Result<VarBuilder<'static>> {
//!     let tensors = read_torch_checkpoint(&std::fs::read(path)?, path)?;
//!     Ok(VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &dev))
//! };
//! let net = StyTr::new(
//!     load("transformer_iter_160000.pth")?,
//!     load("embedding_iter_160000.pth")?,
//!     load("decoder_iter_160000.pth")?,
//!     &Config::original(),
//! )?;
//! # let (photo, painting) = (Tensor::zeros((1, 3, 480, 640), DType::F32, &dev)?, Tensor::zeros((1, 3, 512, 512), DType::F32, &dev)?);
//! let out = net.stylize(&photo, &painting)?; // [1, 3, 480, 640]
//! # Ok(()) }
//! ```

use crate::adain;
use crate::stytr_pe::{linear, Cape, Pyramidal};
use candle_core::{bail, DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use easel_cpu::{reflect_pad, FusedAttention};
use serde::{Deserialize, Serialize};

/// LayerNorm epsilon (`nn.LayerNorm` default).
const LN_EPS: f32 = 1e-5;

/// Side of the square patches of the embedding.
pub const PATCH: usize = 8;

/// Which positional encoding the content tokens get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PositionalEncoding {
    /// StyTr²'s content-aware encoding ([`crate::stytr_pe::Cape`]): average pooling to a
    /// `grid × grid` map (18 in the paper), 1×1 conv, bilinear back. Keys `new_ps.*`.
    Cape {
        /// Side of the pooled grid.
        grid: usize,
    },
    /// easel's pyramidal encoding ([`crate::stytr_pe::Pyramidal`]). Keys `ppe.*`.
    Pyramidal {
        /// Window sizes in tokens, one per scale.
        windows: Vec<usize>,
        /// Output channels of each conv of each scale.
        branch_channels: usize,
    },
}

/// Network options (serialised in `easel train-fast` checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Token width (512).
    pub d_model: usize,
    /// Attention heads (8); must divide `d_model`.
    pub nhead: usize,
    /// Layers of each encoder (3).
    pub num_encoder_layers: usize,
    /// Layers of the decoder (3).
    pub num_decoder_layers: usize,
    /// Hidden width of the feed-forward blocks (2048).
    pub dim_feedforward: usize,
    /// Channels of the CNN decoder's stages, as [`adain::Config::widths`]
    /// (`[64, 128, 256, 512]`); the last must equal `d_model`.
    pub decoder_widths: [usize; 4],
    /// The content tokens' positional encoding.
    pub pos: PositionalEncoding,
    /// Most attention scores held at once on the candle path (per attention call, before the
    /// softmax copy): the query chunk size is `max(1, max_attention_scores / (B · nhead · keys))`.
    /// The fused CPU kernel holds a few score tiles per thread instead.
    pub max_attention_scores: usize,
}

impl Config {
    /// The published network (CAPE, grid 18).
    pub fn original() -> Self {
        Self {
            d_model: 512,
            nhead: 8,
            num_encoder_layers: 3,
            num_decoder_layers: 3,
            dim_feedforward: 2048,
            decoder_widths: adain::Config::original().widths,
            pos: PositionalEncoding::Cape { grid: 18 },
            max_attention_scores: 1 << 24,
        }
    }

    /// The published sizes with the pyramidal encoding (windows 8/16/32 tokens, 128 channels per
    /// conv).
    pub fn original_pyramidal() -> Self {
        Self {
            pos: PositionalEncoding::Pyramidal {
                windows: vec![8, 16, 32],
                branch_channels: 128,
            },
            ..Self::original()
        }
    }

    /// The test networks of `tools/ref/stytr_ref.py`: `d_model` 32, 4 heads, feed-forward 64,
    /// decoder widths `[4, 8, 16, 32]`, CAPE grid 6.
    pub fn tiny() -> Self {
        Self {
            d_model: 32,
            nhead: 4,
            num_encoder_layers: 3,
            num_decoder_layers: 3,
            dim_feedforward: 64,
            decoder_widths: [4, 8, 16, 32],
            pos: PositionalEncoding::Cape { grid: 6 },
            max_attention_scores: 1 << 24,
        }
    }

    /// [`Self::tiny`] with the pyramidal encoding (windows 2/4/8 tokens, 4 channels per conv).
    pub fn tiny_pyramidal() -> Self {
        Self {
            pos: PositionalEncoding::Pyramidal {
                windows: vec![2, 4, 8],
                branch_channels: 4,
            },
            ..Self::tiny()
        }
    }

    /// Checks the options; the error names the wrong one.
    pub fn validate(&self) -> Result<()> {
        let zero = [
            ("d_model", self.d_model),
            ("nhead", self.nhead),
            ("dim_feedforward", self.dim_feedforward),
            ("max_attention_scores", self.max_attention_scores),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            bail!("StyTr config: {name} must be positive")
        }
        if !self.d_model.is_multiple_of(self.nhead) {
            bail!(
                "StyTr config: d_model {} is not a multiple of nhead {}",
                self.d_model,
                self.nhead
            )
        }
        if self.decoder_widths[3] != self.d_model {
            bail!(
                "StyTr config: the CNN decoder takes {} channels but d_model is {}",
                self.decoder_widths[3],
                self.d_model
            )
        }
        Ok(())
    }
}

/// Whether `t` is part of an autograd graph (then the differentiable ops are used).
fn tracks(t: &[&Tensor]) -> bool {
    t.iter().any(|t| t.track_op())
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if tracks(&[x]) {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `nn.LayerNorm` over the last dim.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(vb: VarBuilder, d: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get(d, "weight")?,
            bias: vb.get(d, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if tracks(&[x, &self.weight, &self.bias]) {
            candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, LN_EPS)
        } else {
            candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, LN_EPS)
        }
    }
}

/// `nn.Linear`.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(vb: VarBuilder, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((d_out, d_in), "weight")?,
            bias: vb.get(d_out, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, Some(&self.bias))
    }
}

/// `nn.MultiheadAttention` (batch second in PyTorch; here tokens are `[B, L, d]`).
#[derive(Debug, Clone)]
struct Attention {
    /// `in_proj_weight` `[3d, d]` (q, k, v rows) and `in_proj_bias`.
    in_w: Tensor,
    in_b: Tensor,
    out: Linear,
    nhead: usize,
    max_scores: usize,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            in_w: vb.get((3 * d, d), "in_proj_weight")?,
            in_b: vb.get(3 * d, "in_proj_bias")?,
            out: Linear::new(vb.pp("out_proj"), d, d)?,
            nhead: cfg.nhead,
            max_scores: cfg.max_attention_scores,
        })
    }

    /// Projection `i` (0 q, 1 k, 2 v) of `x`, split into heads: `[B, heads, L, d/heads]`.
    fn project(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let w = self.in_w.narrow(0, i * d, d)?;
        let bias = self.in_b.narrow(0, i * d, d)?;
        linear(x, &w, Some(&bias))?
            .reshape((b, l, self.nhead, d / self.nhead))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `softmax(q kᵀ / √(d/heads)) v` per head, then `out_proj`; `q` `[B, L, d]`, `k`, `v`
    /// `[B, S, d]`. Queries go in chunks (see [`Config::max_attention_scores`]).
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, l, d) = q.dims3()?;
        let s = k.dim(1)?;
        let head = d / self.nhead;
        let fused = q.device().is_cpu()
            && q.dtype() == DType::F32
            && !tracks(&[q, k, v, &self.in_w, &self.in_b]);
        if fused {
            let project = |x: &Tensor, i: usize| {
                let w = self.in_w.narrow(0, i * d, d)?;
                linear(x, &w, Some(&self.in_b.narrow(0, i * d, d)?))?.contiguous()
            };
            let op = FusedAttention {
                heads: self.nhead,
                scale: 1.0 / (head as f32).sqrt(),
            };
            let o = project(q, 0)?.apply_op3_no_bwd(&project(k, 1)?, &project(v, 2)?, &op)?;
            return self.out.forward(&o);
        }
        let q = (self.project(q, 0)? * (1.0 / (head as f64).sqrt()))?;
        let kt = self.project(k, 1)?.transpose(2, 3)?.contiguous()?;
        let v = self.project(v, 2)?;
        let chunk = (self.max_scores / (b * self.nhead * s).max(1)).clamp(1, l.max(1));
        let mut outs = Vec::with_capacity(l.div_ceil(chunk));
        let mut start = 0;
        while start < l {
            let n = chunk.min(l - start);
            let qc = if n == l {
                q.clone()
            } else {
                q.narrow(2, start, n)?.contiguous()?
            };
            let p = softmax_last(&qc.matmul(&kt)?)?;
            outs.push(p.matmul(&v)?);
            start += n;
        }
        let o = if outs.len() == 1 {
            outs.swap_remove(0)
        } else {
            Tensor::cat(&outs, 2)?
        };
        let o = o.transpose(1, 2)?.reshape((b, l, d))?;
        self.out.forward(&o)
    }
}

/// `linear2(relu(linear1(x)))`.
#[derive(Debug, Clone)]
struct FeedForward {
    linear1: Linear,
    linear2: Linear,
}

impl FeedForward {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            linear1: Linear::new(vb.pp("linear1"), cfg.d_model, cfg.dim_feedforward)?,
            linear2: Linear::new(vb.pp("linear2"), cfg.dim_feedforward, cfg.d_model)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear2.forward(&self.linear1.forward(x)?.relu()?)
    }
}

/// `TransformerEncoderLayer.forward_post`.
#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: Attention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            ff: FeedForward::new(&vb, cfg)?,
            norm1: LayerNorm::new(vb.pp("norm1"), cfg.d_model)?,
            norm2: LayerNorm::new(vb.pp("norm2"), cfg.d_model)?,
        })
    }

    fn forward(&self, src: &Tensor, pos: Option<&Tensor>) -> Result<Tensor> {
        let qk = match pos {
            Some(p) => (src + p)?,
            None => src.clone(),
        };
        let src = self
            .norm1
            .forward(&(src + self.self_attn.forward(&qk, &qk, src)?)?)?;
        self.norm2.forward(&(&src + self.ff.forward(&src)?)?)
    }
}

/// `TransformerDecoderLayer.forward_post` as published (both attentions read the style).
#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    multihead_attn: Attention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
}

impl DecoderLayer {
    fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            multihead_attn: Attention::new(vb.pp("multihead_attn"), cfg)?,
            ff: FeedForward::new(&vb, cfg)?,
            norm1: LayerNorm::new(vb.pp("norm1"), cfg.d_model)?,
            norm2: LayerNorm::new(vb.pp("norm2"), cfg.d_model)?,
            norm3: LayerNorm::new(vb.pp("norm3"), cfg.d_model)?,
        })
    }

    fn forward(&self, tgt: &Tensor, memory: &Tensor, query_pos: &Tensor) -> Result<Tensor> {
        let a = self
            .self_attn
            .forward(&(tgt + query_pos)?, memory, memory)?;
        let tgt = self.norm1.forward(&(tgt + a)?)?;
        let a = self
            .multihead_attn
            .forward(&(&tgt + query_pos)?, memory, memory)?;
        let tgt = self.norm2.forward(&(tgt + a)?)?;
        self.norm3.forward(&(&tgt + self.ff.forward(&tgt)?)?)
    }
}

#[derive(Debug, Clone)]
enum PosEncoder {
    Cape(Cape),
    Pyramidal(Pyramidal),
}

/// The StyTr² network: patch embedding, transformer, CNN decoder.
#[derive(Debug, Clone)]
pub struct StyTr {
    /// `proj.weight` as `[d, 3·8·8]`.
    embed_w: Tensor,
    embed_b: Tensor,
    encoder_c: Vec<EncoderLayer>,
    encoder_s: Vec<EncoderLayer>,
    decoder_layers: Vec<DecoderLayer>,
    decoder_norm: LayerNorm,
    pos: PosEncoder,
    decoder: adain::Decoder,
    cfg: Config,
}

impl StyTr {
    /// Builds the network from the three state dicts of a StyTr² checkpoint set:
    /// `transformer` (`transformer_iter_*.pth`), `embedding` (`embedding_iter_*.pth`) and
    /// `decoder` (`decoder_iter_*.pth`).
    pub fn new(
        transformer: VarBuilder,
        embedding: VarBuilder,
        decoder: VarBuilder,
        cfg: &Config,
    ) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.d_model;
        let layers = |name: &str, n: usize| -> Result<Vec<EncoderLayer>> {
            (0..n)
                .map(|i| EncoderLayer::new(transformer.pp(name).pp("layers").pp(i), cfg))
                .collect()
        };
        let vb_dec = transformer.pp("decoder");
        let decoder_layers = (0..cfg.num_decoder_layers)
            .map(|i| DecoderLayer::new(vb_dec.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let pos = match &cfg.pos {
            PositionalEncoding::Cape { grid } => {
                PosEncoder::Cape(Cape::new(transformer.clone(), d, *grid)?)
            }
            PositionalEncoding::Pyramidal {
                windows,
                branch_channels,
            } => PosEncoder::Pyramidal(Pyramidal::new(
                transformer.clone(),
                d,
                windows,
                *branch_channels,
            )?),
        };
        let vb_e = embedding.pp("proj");
        let dec_cfg = adain::Config {
            widths: cfg.decoder_widths,
        };
        Ok(Self {
            embed_w: vb_e
                .get((d, 3, PATCH, PATCH), "weight")?
                .reshape((d, 3 * PATCH * PATCH))?,
            embed_b: vb_e.get(d, "bias")?,
            encoder_c: layers("encoder_c", cfg.num_encoder_layers)?,
            encoder_s: layers("encoder_s", cfg.num_encoder_layers)?,
            decoder_layers,
            decoder_norm: LayerNorm::new(vb_dec.pp("norm"), d)?,
            pos,
            decoder: adain::Decoder::new(decoder, &dec_cfg)?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The CNN decoder.
    pub fn decoder(&self) -> &adain::Decoder {
        &self.decoder
    }

    /// Patch embedding of `[B, 3, H, W]` (sides multiples of 8) as tokens `[B, H/8, W/8, d]`.
    fn embed_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        if c != 3 || !hh.is_multiple_of(PATCH) || !ww.is_multiple_of(PATCH) || hh == 0 || ww == 0 {
            bail!(
                "StyTr embedding takes [B, 3, H, W] with H and W positive multiples of {PATCH}, got {:?}",
                x.dims()
            )
        }
        let (h, w) = (hh / PATCH, ww / PATCH);
        // [B, 3, h, 8, w, 8] → [B, h, w, 3, 8, 8]: each token's patch in the conv weight's order.
        let patches = x
            .to_dtype(DType::F32)?
            .reshape((b, c, h, PATCH, w, PATCH))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?;
        linear(
            &patches.reshape((b, h, w, c * PATCH * PATCH))?,
            &self.embed_w,
            Some(&self.embed_b),
        )
    }

    /// The patch embedding (`embedding(x)`, an 8×8 stride-8 conv): `[B, 3, H, W]` with sides
    /// multiples of 8 → `[B, d, H/8, W/8]`.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        self.embed_tokens(x)?.permute((0, 3, 1, 2))?.contiguous()
    }

    /// The positional encoding of content embeddings `[B, d, h, w]`, same shape.
    pub fn positional_encoding(&self, content: &Tensor) -> Result<Tensor> {
        let tokens = content.permute((0, 2, 3, 1))?.contiguous()?;
        self.pos_tokens(&tokens)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    fn pos_tokens(&self, content: &Tensor) -> Result<Tensor> {
        match &self.pos {
            PosEncoder::Cape(p) => p.forward(content),
            PosEncoder::Pyramidal(p) => p.forward(content),
        }
    }

    /// The transformer on token grids: content `[B, h, w, d]`, style `[B, hs, ws, d]` →
    /// `[B, h, w, d]`.
    fn transform_tokens(&self, content: &Tensor, style: &Tensor) -> Result<Tensor> {
        let (b, h, w, d) = content.dims4()?;
        let (bs, hs, ws, ds) = style.dims4()?;
        if bs != b || ds != d || d != self.cfg.d_model {
            bail!(
                "StyTr transformer: content tokens [{b}, {h}, {w}, {d}] and style tokens [{bs}, {hs}, {ws}, {ds}] for d_model {}",
                self.cfg.d_model
            )
        }
        let pos = self.pos_tokens(content)?.reshape((b, h * w, d))?;
        let mut style = style.reshape((b, hs * ws, d))?;
        for layer in &self.encoder_s {
            style = layer.forward(&style, None)?;
        }
        let mut x = content.reshape((b, h * w, d))?;
        for layer in &self.encoder_c {
            x = layer.forward(&x, Some(&pos))?;
        }
        for layer in &self.decoder_layers {
            x = layer.forward(&x, &style, &pos)?;
        }
        self.decoder_norm.forward(&x)?.reshape((b, h, w, d))
    }

    /// The transformer (`Transformer.forward(style, mask=None, content, None, None)`):
    /// content embeddings `[B, d, h, w]` and style embeddings `[B, d, hs, ws]` → `[B, d, h, w]`.
    pub fn transform(&self, content: &Tensor, style: &Tensor) -> Result<Tensor> {
        let t = |x: &Tensor| x.permute((0, 2, 3, 1))?.contiguous();
        self.transform_tokens(&t(content)?, &t(style)?)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// The whole network on images whose sides are multiples of 8 (as StyTr²'s `StyTrans` in
    /// eval): `decode(transformer(embed(style), embed(content)))`. `content` `[B, 3, H, W]`,
    /// `style` `[B, 3, Hs, Ws]`, RGB in [0, 1]; returns `[B, 3, H, W]`, not clamped.
    pub fn forward(&self, content: &Tensor, style: &Tensor) -> Result<Tensor> {
        let c = self.embed_tokens(content)?;
        let s = self.embed_tokens(style)?;
        if c.dim(1)? < 2 || c.dim(2)? < 2 {
            bail!(
                "StyTr needs a content image of at least 16x16 pixels (2x2 patches), got {:?}",
                content.dims()
            )
        }
        let hs = self
            .transform_tokens(&c, &s)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        self.decoder.forward(&hs)
    }

    /// Stylizes one photo `[1, 3, H, W]` (sides ≥ 9) with one painting `[1, 3, Hs, Ws]` (sides
    /// ≥ 8), RGB in [0, 1], any sizes: both are reflection-padded at the bottom/right to
    /// multiples of 8, the network runs, and the result is cropped back to `[1, 3, H, W]`
    /// (not clamped).
    pub fn stylize(&self, content: &Tensor, style: &Tensor) -> Result<Tensor> {
        let check = |x: &Tensor, what: &str, min: usize| -> Result<(usize, usize)> {
            match x.dims() {
                [1, 3, h, w] if *h >= min && *w >= min => Ok((*h, *w)),
                [1, 3, h, w] => bail!(
                    "the {what} is {w}x{h}; StyTr needs both sides to be at least {min} pixels"
                ),
                d => bail!("the {what} must be one RGB picture [1, 3, H, W], got {d:?}"),
            }
        };
        let (h, w) = check(content, "photo", 9)?;
        check(style, "style image", PATCH)?;
        let pad8 = |x: &Tensor| -> Result<Tensor> {
            let (_, _, h, w) = x.dims4()?;
            let x = x.to_dtype(DType::F32)?;
            reflect_pad(
                &x,
                0,
                (PATCH - h % PATCH) % PATCH,
                0,
                (PATCH - w % PATCH) % PATCH,
            )
        };
        self.forward(&pad8(content)?, &pad8(style)?)?
            .narrow(2, 0, h)?
            .narrow(3, 0, w)
    }
}
