//! easel-core: the parts of easel every stylisation method shares.
//!
//! * [`load_rgb`] / [`save_image`]: defensive image I/O (format detected from
//!   content, EXIF orientation, alpha over white, pixel limit checked before
//!   decoding; atomic writes that never overwrite an input, generation
//!   [`Parameters`] stored in PNG output).
//! * [`collect_images`]: expands the input paths given on the command line.
//! * [`rgb_to_tensor`] / [`tensor_to_rgb`]: images ↔ `[1, 3, H, W]` tensors.
//! * [`keep_colors`]: luminance-only style transfer (keep the photo's colours).
//! * [`select_device`]: CPU / CUDA selection.
//! * [`label`]: text on images (grid and contact-sheet labels).
//! * [`rng`]: the seeded generator every seeded computation draws from.
//! * [`safetensors_writer`]: the one safetensors writer, byte-for-byte reproducible.
//! * [`torch_checkpoint`]: PyTorch `torch.save` files read without executing them.
//! * [`training`]: the Adam/AdamW update and checkpoint files shared by the trainers.
//! * [`HubResolver`] / [`WeightSource`]: model weights from the Hugging Face
//!   cache, the hub, or local folders, with one clear error for missing files.
//!
//! Nothing here panics on user input: every failure is an [`Error`] whose
//! message is one line naming the file and the problem.

#![warn(missing_docs)]

pub mod atomic;
pub mod color;
pub mod device;
pub mod error;
pub mod hash;
pub mod hub;
pub mod image_io;
pub mod label;
pub mod memory;
pub mod parameters;
pub mod rng;
pub mod safetensors_writer;
pub mod stats;
pub mod tensor;
pub mod time;
pub mod torch_checkpoint;
pub mod training;

pub use atomic::{write_atomic, write_output};
pub use color::keep_colors;
pub use device::{select_device, DeviceChoice};
pub use error::{Error, Result, SizeRelief};
pub use hub::{
    resolve_first_in_dir, resolve_in_dir, resolve_optional_in_dir, DownloadEvent, HubResolver,
    MissingModelFiles, MissingReason, ProgressHook, RepoFiles, WeightSource,
};
pub use image_io::{
    collect_images, decode_rgb, downscale_to_fit, encode_png, load_rgb, read_png_parameters,
    save_image, save_image16, LoadOptions, Rgb16Image, DEFAULT_MAX_PIXELS, DOWNSCALE_MAX_PIXELS,
    IMAGE_EXTENSIONS, JPEG_QUALITY, PARAMETERS_KEYWORD,
};
pub use parameters::Parameters;
pub use tensor::{rgb_to_tensor, tensor_to_rgb, tensor_to_rgb16};
