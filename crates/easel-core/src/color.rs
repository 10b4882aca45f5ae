//! Colour handling for stylised output.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

// BT.601 full-range (JPEG) RGB ↔ YCbCr. The +0.5 chroma offset is left out:
// it cancels between the forward and inverse transforms.
const RGB_TO_Y: [f64; 3] = [0.299, 0.587, 0.114];
const RGB_TO_CB: [f64; 3] = [-0.168_735_891_647_856, -0.331_264_108_352_144, 0.5];
const RGB_TO_CR: [f64; 3] = [0.5, -0.418_687_589_158_345, -0.081_312_410_841_655];
const CR_TO_R: f64 = 1.402;
const CB_TO_G: f64 = -0.344_136_286_201_022;
const CR_TO_G: f64 = -0.714_136_286_201_022;
const CB_TO_B: f64 = 1.772;

/// Keeps the photo's colours and takes only the brightness from the
/// stylised image: the luminance-only transfer of Gatys et al. 2016,
/// "Preserving color in neural artistic style transfer".
///
/// Both tensors are RGB in `[0, 1]`, shaped `[1, 3, H, W]` or `[3, H, W]`,
/// with the same shape (resize the photo first if needed) and on the same
/// device. The result (f32, same shape) has the luma Y of `stylized` and the
/// chroma Cb, Cr of `photo` (BT.601 full range). It is not clamped: values
/// can leave `[0, 1]` where the combination is out of gamut, and
/// [`tensor_to_rgb`](crate::tensor_to_rgb) clamps.
pub fn keep_colors(photo: &Tensor, stylized: &Tensor) -> Result<Tensor> {
    let channel_dim = match photo.dims() {
        [1, 3, _, _] => 1,
        [3, _, _] => 0,
        dims => {
            return Err(Error::InvalidArgument(format!(
                "keep_colors: photo has shape {dims:?}, expected [1, 3, H, W] or [3, H, W]"
            )))
        }
    };
    if photo.dims() != stylized.dims() {
        return Err(Error::InvalidArgument(format!(
            "keep_colors: photo is {:?} but stylized image is {:?}; resize the photo to the stylized size first",
            photo.dims(),
            stylized.dims()
        )));
    }
    let photo = photo.to_dtype(DType::F32)?;
    let stylized = stylized.to_dtype(DType::F32)?;

    let mix = |t: &Tensor, weights: [f64; 3]| -> Result<Tensor> {
        let r = t.narrow(channel_dim, 0, 1)?;
        let g = t.narrow(channel_dim, 1, 1)?;
        let b = t.narrow(channel_dim, 2, 1)?;
        Ok(((r.affine(weights[0], 0.)? + g.affine(weights[1], 0.)?)?
            + b.affine(weights[2], 0.)?)?)
    };
    let y = mix(&stylized, RGB_TO_Y)?;
    let cb = mix(&photo, RGB_TO_CB)?;
    let cr = mix(&photo, RGB_TO_CR)?;

    let r = (&y + cr.affine(CR_TO_R, 0.)?)?;
    let g = ((&y + cb.affine(CB_TO_G, 0.)?)? + cr.affine(CR_TO_G, 0.)?)?;
    let b = (&y + cb.affine(CB_TO_B, 0.)?)?;
    Ok(Tensor::cat(&[r, g, b], channel_dim)?)
}
