//! `rgb_to_tensor` / `tensor_to_rgb`, `keep_colors`, device selection.

use candle_core::{DType, Device, Tensor};
use easel_core::{keep_colors, rgb_to_tensor, select_device, tensor_to_rgb, DeviceChoice, Error};
use image::{Rgb, RgbImage};

#[test]
fn image_to_tensor_layout_and_values() {
    let img = RgbImage::from_fn(3, 2, |x, y| Rgb([(x * 100) as u8, (y * 255) as u8, 51]));
    let t = rgb_to_tensor(&img, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[1, 3, 2, 3]);
    assert_eq!(t.dtype(), DType::F32);
    let v = t
        .to_vec3::<f32>()
        .unwrap_or_else(|_| t.squeeze(0).unwrap().to_vec3::<f32>().unwrap());
    assert_eq!(v[0][1], vec![0.0, 100.0 / 255.0, 200.0 / 255.0]); // R, row 1
    assert_eq!(v[1][0], vec![0.0, 0.0, 0.0]); // G, row 0
    assert_eq!(v[1][1], vec![1.0, 1.0, 1.0]); // G, row 1
    assert_eq!(v[2][0][2], 0.2); // B = 51/255
    assert_eq!(tensor_to_rgb(&t).unwrap(), img);
    assert_eq!(tensor_to_rgb(&t.squeeze(0).unwrap()).unwrap(), img);
}

#[test]
fn tensor_to_image_clamps_and_rounds() {
    // One row of 6 pixels in each channel.
    let r = [-0.5f32, 0.0, 0.5 / 255.0, 0.499 / 255.0, 1.0, 7.0];
    let mut data = r.to_vec();
    data.extend([0.5f32; 6]);
    data.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.25,
        0.75,
        1.0 - 1e-7,
        0.999,
    ]);
    let t = Tensor::from_vec(data, (3, 1, 6), &Device::Cpu).unwrap();
    let img = tensor_to_rgb(&t).unwrap();
    let reds: Vec<u8> = img.pixels().map(|p| p[0]).collect();
    assert_eq!(reds, [0, 0, 1, 0, 255, 255]);
    assert!(img.pixels().all(|p| p[1] == 128)); // 127.5 + 0.5 floors to 128
    let blues: Vec<u8> = img.pixels().map(|p| p[2]).collect();
    assert_eq!(blues, [255, 0, 64, 191, 255, 255]);
    // Other float dtypes are accepted.
    let half = t.to_dtype(DType::F16).unwrap();
    assert_eq!(tensor_to_rgb(&half).unwrap().dimensions(), (6, 1));
}

#[test]
fn tensor_to_image_errors() {
    let cpu = Device::Cpu;
    let err = tensor_to_rgb(&Tensor::zeros((3, 4), DType::F32, &cpu).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot turn a tensor of shape [3, 4] into an image: expected [1, 3, H, W] or [3, H, W]"
    );
    let err = tensor_to_rgb(&Tensor::zeros((2, 3, 4, 4), DType::F32, &cpu).unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected [1, 3, H, W] or [3, H, W]"),
        "{err}"
    );
    let err = tensor_to_rgb(&Tensor::zeros((1, 4, 2, 2), DType::F32, &cpu).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot turn a tensor of shape [1, 4, 2, 2] into an image: it has 4 channels, expected 3 (RGB)"
    );
    let nan = Tensor::from_vec(
        vec![0.5f32, f32::NAN, 0.1, 0.2, f32::NAN, 0.3],
        (3, 1, 2),
        &cpu,
    )
    .unwrap();
    let err = tensor_to_rgb(&nan).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    assert_eq!(
        err.to_string(),
        "cannot turn the tensor into an image: 2 of its 6 values are NaN (the model produced invalid output)"
    );
}

/// BT.601 full-range YCbCr of one RGB pixel (f64, reference formulas).
fn ycbcr(rgb: [f64; 3]) -> [f64; 3] {
    let [r, g, b] = rgb;
    [
        0.299 * r + 0.587 * g + 0.114 * b,
        -0.168_736 * r - 0.331_264 * g + 0.5 * b,
        0.5 * r - 0.418_688 * g - 0.081_312 * b,
    ]
}

fn pixels(t: &Tensor) -> Vec<[f64; 3]> {
    let t = t.squeeze(0).unwrap().flatten_from(1).unwrap();
    let v = t.to_vec2::<f32>().unwrap();
    (0..v[0].len())
        .map(|i| [v[0][i] as f64, v[1][i] as f64, v[2][i] as f64])
        .collect()
}

#[test]
fn keep_colors_takes_luma_from_stylized_and_chroma_from_photo() {
    let cpu = Device::Cpu;
    // Deterministic pseudo-random values in [0, 1], incl. saturated colours.
    let values = |seed: u32| -> Vec<f32> {
        let mut s = seed;
        (0..3 * 5 * 7)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32
            })
            .collect()
    };
    let photo = Tensor::from_vec(values(1), (1, 3, 5, 7), &cpu).unwrap();
    let stylized = Tensor::from_vec(values(2), (1, 3, 5, 7), &cpu).unwrap();
    let out = keep_colors(&photo, &stylized).unwrap();
    assert_eq!(out.dims(), &[1, 3, 5, 7]);

    let mut max_err = 0f64;
    for ((o, p), s) in pixels(&out)
        .into_iter()
        .zip(pixels(&photo))
        .zip(pixels(&stylized))
    {
        let (o, p, s) = (ycbcr(o), ycbcr(p), ycbcr(s));
        max_err = max_err.max((o[0] - s[0]).abs()); // luma from stylized
        max_err = max_err.max((o[1] - p[1]).abs()); // chroma from photo
        max_err = max_err.max((o[2] - p[2]).abs());
    }
    assert!(max_err < 1e-5, "max abs error {max_err}");

    // [3, H, W] works the same.
    let out3 = keep_colors(&photo.squeeze(0).unwrap(), &stylized.squeeze(0).unwrap()).unwrap();
    let diff = (out3 - out.squeeze(0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);

    // A grey stylized image on a coloured photo keeps the photo's hue.
    let grey = Tensor::full(0.5f32, (1, 3, 5, 7), &cpu).unwrap();
    let tinted = keep_colors(&photo, &grey).unwrap();
    for (t, p) in pixels(&tinted).into_iter().zip(pixels(&photo)) {
        assert!((ycbcr(t)[0] - 0.5).abs() < 1e-5);
        assert!((ycbcr(t)[1] - ycbcr(p)[1]).abs() < 1e-5);
    }
}

#[test]
fn keep_colors_shape_errors() {
    let cpu = Device::Cpu;
    let a = Tensor::zeros((1, 3, 4, 4), DType::F32, &cpu).unwrap();
    let b = Tensor::zeros((1, 3, 4, 5), DType::F32, &cpu).unwrap();
    assert_eq!(
        keep_colors(&a, &b).unwrap_err().to_string(),
        "keep_colors: photo is [1, 3, 4, 4] but stylized image is [1, 3, 4, 5]; resize the photo to the stylized size first"
    );
    let grey = Tensor::zeros((1, 1, 4, 4), DType::F32, &cpu).unwrap();
    assert_eq!(
        keep_colors(&grey, &grey).unwrap_err().to_string(),
        "keep_colors: photo has shape [1, 1, 4, 4], expected [1, 3, H, W] or [3, H, W]"
    );
}

#[test]
fn device_choice_parses_and_displays() {
    for (text, choice) in [
        ("auto", DeviceChoice::Auto),
        ("CPU", DeviceChoice::Cpu),
        (" cuda ", DeviceChoice::Cuda),
    ] {
        assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice);
    }
    for choice in DeviceChoice::ALL {
        assert_eq!(choice.to_string().parse::<DeviceChoice>().unwrap(), choice);
    }
    assert_eq!(DeviceChoice::default(), DeviceChoice::Auto);
    assert_eq!(
        "gpu".parse::<DeviceChoice>().unwrap_err().to_string(),
        "unknown device \"gpu\"; expected one of: auto, cpu, cuda"
    );
}

#[test]
fn select_device_cpu_and_auto() {
    assert!(select_device(DeviceChoice::Cpu).unwrap().is_cpu());
    let auto = select_device(DeviceChoice::Auto).unwrap();
    if !candle_core::utils::cuda_is_available() {
        assert!(auto.is_cpu());
    }
}

#[test]
fn cuda_without_cuda_build_is_a_clear_error() {
    if candle_core::utils::cuda_is_available() {
        return; // built with --features cuda: nothing to check here
    }
    assert_eq!(
        select_device(DeviceChoice::Cuda).unwrap_err().to_string(),
        "this easel was built without CUDA; rebuild with --features cuda"
    );
}
