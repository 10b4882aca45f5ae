//! easel fast path: feed-forward style transfer networks that run in one pass.
//!
//! - [`arbitrary`]: the arbitrary-style network of Ghiasi et al. 2017 (style prediction network →
//!   100-d style code → transformer network with conditional instance norm).
//! - [`cin26`]: a 26-style network with conditional instance norm (Dumoulin et al. 2017).
//! - [`adain`]: AdaIN (Huang & Belongie 2017): VGG-19 features re-normalised to a painting's
//!   statistics, decoded; alpha trade-off, style interpolation, spatial control with a mask.
//! - [`stytr`]: StyTr² (Deng et al. 2022), a transformer stylizer: patch tokens of the photo
//!   and the painting, content/style transformer encoders, a decoder where the photo's tokens
//!   attend to the painting's, a CNN decoder; CAPE or pyramidal positional encodings
//!   ([`stytr_pe`]), any size, chunked attention.
//! - [`efficientnet`]: the embedded EfficientNet-Lite0 (ImageNet) as a perceptual network:
//!   features at named layers, and their exact gradient to the picture.
//! - [`gatys`]: optimisation-based style transfer (Gatys et al. 2016/2017) on it or on VGG-19:
//!   L-BFGS or Adam, masked Gram matrices, colour and scale controls, octaves.
//! - [`vgg`]: the "vgg_normalised" VGG-19 encoder AdaIN uses (relu1_1 … relu5_1).
//! - [`vgg19`]: VGG-19 as Gatys' perceptual network, from AdaIN's `vgg_normalised.pth` or
//!   torchvision's `vgg19-dcbb9e9d.pth` (all 16 ReLU layers).
//! - [`tape`]: features' gradients to the picture by candle's autograd.
//! - [`losses`]: the training losses of AdaIN and StyTr² (content, style, identity).
//! - [`train`]: the trainer of `easel train-fast` (data, Adam, checkpoints, sample grids).
//! - [`import`]: converters from the upstream ONNX files to easel's safetensors weights, and a
//!   PyTorch checkpoint reader that executes nothing.

pub mod adain;
pub mod arbitrary;
pub mod cin26;
pub mod efficientnet;
pub mod gatys;
pub mod import;
pub mod losses;
pub mod stytr;
pub mod stytr_pe;
pub mod tape;
pub mod train;
pub mod vgg;
pub mod vgg19;
