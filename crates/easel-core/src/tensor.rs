//! Conversions between images and the tensors the networks consume.
//!
//! Layout is candle's (and PyTorch's) NCHW: `[1, 3, H, W]`, `f32`, values in
//! `[0, 1]`.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::error::{Error, Result};
use crate::image_io::Rgb16Image;

/// Converts an RGB8 image to a `[1, 3, H, W]` `f32` tensor in `[0, 1]` on
/// `device`.
pub fn rgb_to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let plane = width * height;
    // Interleaved HWC bytes → planar CHW floats, in one pass over the pixels.
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            data[c * plane + i] = f32::from(v) / 255.0;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, height, width), device)?)
}

/// Converts a `[1, 3, H, W]` or `[3, H, W]` tensor (any float dtype, any
/// device) to an RGB8 image.
///
/// Values are clamped to `[0, 1]` and rounded (`floor(x * 255 + 0.5)`).
/// A wrong rank or channel count, or a NaN anywhere, is an error: NaN means
/// the network diverged, and silently turning it into black would hide that.
pub fn tensor_to_rgb(tensor: &Tensor) -> Result<RgbImage> {
    let (width, height, values) = image_values(tensor)?;
    let raw = values
        .iter()
        // In [0, 255.5] after clamping, so the cast cannot wrap.
        .map(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5).floor().min(255.0) as u8)
        .collect();
    // The buffer holds exactly width * height * 3 values, which is all
    // from_raw checks.
    RgbImage::from_raw(width, height, raw).ok_or_else(|| {
        Error::InvalidArgument("internal error: image buffer size mismatch".to_string())
    })
}

/// [`tensor_to_rgb`] with 16 bits per channel (`floor(x * 65535 + 0.5)`),
/// for PNG output that keeps more than 8 bits of the model's values.
pub fn tensor_to_rgb16(tensor: &Tensor) -> Result<Rgb16Image> {
    let (width, height, values) = image_values(tensor)?;
    let raw = values
        .iter()
        // In [0, 65535.5] after clamping, so the cast cannot wrap.
        .map(|v| (v.clamp(0.0, 1.0) * 65_535.0 + 0.5).floor().min(65_535.0) as u16)
        .collect();
    Rgb16Image::from_raw(width, height, raw).ok_or_else(|| {
        Error::InvalidArgument("internal error: image buffer size mismatch".to_string())
    })
}

/// The checked width, height and interleaved (HWC) f32 values of an image
/// tensor.
fn image_values(tensor: &Tensor) -> Result<(u32, u32, Vec<f32>)> {
    let (channels, height, width) = match tensor.dims() {
        [1, c, h, w] | [c, h, w] => (*c, *h, *w),
        dims => {
            return Err(Error::InvalidArgument(format!(
                "cannot turn a tensor of shape {dims:?} into an image: expected [1, 3, H, W] or [3, H, W]"
            )))
        }
    };
    if channels != 3 {
        return Err(Error::InvalidArgument(format!(
            "cannot turn a tensor of shape {:?} into an image: it has {channels} channels, expected 3 (RGB)",
            tensor.dims()
        )));
    }
    let (Ok(w32), Ok(h32)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(Error::InvalidArgument(format!(
            "cannot turn a tensor of shape {:?} into an image: too large",
            tensor.dims()
        )));
    };
    let values = tensor
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let nan_count = values.iter().filter(|v| v.is_nan()).count();
    if nan_count > 0 {
        return Err(Error::InvalidArgument(format!(
            "cannot turn the tensor into an image: {nan_count} of its {} values are NaN (the model produced invalid output)",
            values.len()
        )));
    }
    let plane = width * height;
    let mut interleaved = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        for c in 0..3 {
            interleaved.push(values[c * plane + i]);
        }
    }
    Ok((w32, h32, interleaved))
}
