//! easel's CPU runtime: SIMD kernels, thread pool and buffers for every network that runs on the
//! CPU, and the one place with SIMD code: easel-fast's networks run on it.
//!
//! - [`simd`]: instruction-set detection ([`Isa`]) and the vector abstraction every kernel is
//!   written in (AVX-512F, AVX2 + FMA, portable), plus [`simd_fn!`] for element-wise loops;
//! - [`pool`]: the blocking thread pool ([`par_for`]) that carries a worker's panic back to the
//!   caller, and [`catch_panic`] turning it into an error at an op's boundary;
//! - [`scratch`]: recycled activation buffers, and [`keep_freed_memory`] for processes that
//!   run networks in tensor ops; [`pad`]: reflection / zero / upsampling pads as
//!   one gather ([`PadOp`], [`reflect_pad`]); [`pool2d`]: the 2×2 ceil-mode max pool
//!   ([`max_pool2_ceil`]);
//! - [`conv`]: direct convolution with fused epilogues ([`Conv2dOp`], a candle `CustomOp1`);
//! - [`attention`]: fused flash-style multi-head attention ([`FusedAttention`], a `CustomOp3`);
//! - [`elementwise`]: vectorised element-wise loops and f64 sums;
//! - [`storage`]: the custom ops' operands (contiguous CPU f32 slices, or an error naming the op);
//! - [`norm`]: group normalisation with its affine part and an optional SiLU in one kernel
//!   ([`GroupNormOp`]);
//! - [`gram`]: the Gram matrix `F Fᵀ` of long feature rows, split over the pool ([`GramOp`]);
//! - [`layer`]: [`ConvLayer`], a convolution with zero or reflection [`Padding`] that takes the
//!   direct kernel for CPU f32 inference and candle's `conv2d` elsewhere, so a network has one
//!   forward in tensor ops.
//!
//! Kernels take contiguous f32 slices or candle CPU tensors; every path of a kernel computes the
//! same operations in the same order, so results are bit-identical across instruction sets
//! (attention within a stated bound: its tile shapes differ per path).

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod gram;
pub mod layer;
pub mod norm;
pub mod pad;
pub mod pool;
pub mod pool2d;
pub mod scratch;
pub mod simd;
pub mod storage;

pub use attention::FusedAttention;
pub use conv::{Conv2d, Conv2dOp, Epilogue, Quantize};
pub use gram::GramOp;
pub use layer::{Activation, ConvLayer, Padding};
pub use norm::{GroupNormOp, NormActivation};
pub use pad::{reflect_pad, PadOp};
pub use pool::{catch_panic, par_chunks_mut, par_for, SharedMut};
pub use pool2d::{max_pool2_ceil, MaxPool2Ceil};
pub use scratch::{keep_freed_memory, Scratch, ScratchCache};
pub use simd::{Isa, ROUND_MAGIC};
