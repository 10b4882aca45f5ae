//! Golden parity of `AutoencoderKL` with diffusers.
//!
//! The fixture `tests/fixtures/vae_tiny.safetensors` is written by `tools/ref/vae_ref.py`
//! (torch + diffusers `AutoencoderKL` on CPU, f32, `torch.manual_seed(1)`, all parameters
//! randomised; see the script's docstring for its keys). Two configs: `tiny` (diffusers' own test
//! config, [`AutoencoderKLConfig::tiny`]) and `deep` (three levels, two resnets per level, like
//! SD1.x in miniature), plus diffusers' tiled encode and decode on `deep` with small tiles.
//! Max abs error ≤ 1e-4.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use easel_diffusion::vae::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian, TileConfig};

use common::{cached, max_abs_diff, tensor, vae_deep_config};

const TOL: f32 = 1e-4;

fn fixtures() -> &'static HashMap<String, Tensor> {
    cached("vae_tiny.safetensors")
}

fn get(key: &str) -> Tensor {
    tensor(fixtures(), key)
}

fn check(what: &str, ours: &Tensor, key: &str) {
    let err = max_abs_diff(ours, &get(key));
    println!("{what}: max abs err {err:.2e}");
    assert!(err <= TOL, "{what}: max abs err {err}");
}

fn load(case: &str, config: AutoencoderKLConfig) -> AutoencoderKL {
    let vb = VarBuilder::from_tensors(fixtures().clone(), DType::F32, &Device::Cpu).pp(case);
    AutoencoderKL::new(vb, config).unwrap()
}

#[test]
fn encode_sample_decode_match_diffusers() {
    for (case, config) in [
        ("tiny", AutoencoderKLConfig::tiny()),
        ("deep", vae_deep_config()),
    ] {
        let vae = load(case, config);
        let image = get(&format!("{case}/image"));
        let dist = vae.encode(&image).unwrap();
        check(
            &format!("{case} mean"),
            dist.mean(),
            &format!("{case}/mean"),
        );
        check(
            &format!("{case} mode"),
            dist.mode(),
            &format!("{case}/mean"),
        );
        check(
            &format!("{case} logvar"),
            dist.logvar(),
            &format!("{case}/logvar"),
        );
        let sample = dist.sample(&get(&format!("{case}/noise"))).unwrap();
        check(
            &format!("{case} sample"),
            &sample,
            &format!("{case}/sample"),
        );
        // Decode diffusers' sample so the decoder is checked on its own.
        let decoded = vae.decode(&get(&format!("{case}/sample"))).unwrap();
        check(
            &format!("{case} decode"),
            &decoded,
            &format!("{case}/decoded"),
        );
        // Round trip shapes: image → latent (÷ factor) → image.
        let (b, _, h, w) = image.dims4().unwrap();
        let f = vae.config().downsampling_factor();
        assert_eq!(sample.dims(), &[b, 4, h / f, w / f]);
        assert_eq!(vae.decode(&sample).unwrap().dims(), image.dims());
    }
}

#[test]
fn tiled_encode_and_decode_match_diffusers() {
    let vae = load("deep", vae_deep_config());
    let tiles = TileConfig {
        tile_sample_min_size: 16,
        tile_latent_min_size: 4,
        tile_overlap_factor: 0.25,
    };
    let decoded = vae.decode_tiled(&get("tiled/latents"), &tiles).unwrap();
    check("tiled decode", &decoded, "tiled/decoded");

    let dist = vae.encode_tiled(&get("tiled/image"), &tiles).unwrap();
    let expected = DiagonalGaussian::from_moments(&get("tiled/moments")).unwrap();
    let err = max_abs_diff(dist.mean(), expected.mean())
        .max(max_abs_diff(dist.logvar(), expected.logvar()));
    println!("tiled encode: max abs err {err:.2e}");
    assert!(err <= TOL, "tiled encode: max abs err {err}");

    // Inputs within one tile go through the plain path.
    let small = get("deep/sample");
    let whole = vae.decode(&small).unwrap();
    let big_tiles = TileConfig {
        tile_latent_min_size: 8,
        ..tiles
    };
    assert_eq!(
        max_abs_diff(&vae.decode_tiled(&small, &big_tiles).unwrap(), &whole),
        0.0
    );
}

#[test]
fn rejects_bad_inputs_and_configs() {
    let vae = load("deep", vae_deep_config());
    let dev = Device::Cpu;
    let wrong_channels = Tensor::zeros((1, 4, 16, 16), DType::F32, &dev).unwrap();
    assert!(vae.encode(&wrong_channels).is_err());
    let wrong_latent = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
    assert!(vae.decode(&wrong_latent).is_err());
    let empty = Tensor::zeros((1, 3, 0, 16), DType::F32, &dev).unwrap();
    assert!(vae.encode(&empty).is_err());
    let not_4d = Tensor::zeros((3, 16, 16), DType::F32, &dev).unwrap();
    assert!(vae.encode(&not_4d).is_err());

    let dist = vae.encode(&get("deep/image")).unwrap();
    let wrong_noise = Tensor::zeros((1, 4, 6, 4), DType::F32, &dev).unwrap();
    assert!(dist.sample(&wrong_noise).is_err());
    let odd_moments = Tensor::zeros((1, 7, 2, 2), DType::F32, &dev).unwrap();
    assert!(DiagonalGaussian::from_moments(&odd_moments).is_err());

    let bad_tiles = TileConfig {
        tile_sample_min_size: 16,
        tile_latent_min_size: 1,
        tile_overlap_factor: 0.25,
    };
    assert!(vae.decode_tiled(&get("tiled/latents"), &bad_tiles).is_err());

    let vb = VarBuilder::from_tensors(fixtures().clone(), DType::F32, &dev).pp("deep");
    for config in [
        AutoencoderKLConfig {
            block_out_channels: vec![],
            ..vae_deep_config()
        },
        AutoencoderKLConfig {
            norm_num_groups: 3,
            ..vae_deep_config()
        },
        AutoencoderKLConfig {
            layers_per_block: 0,
            ..vae_deep_config()
        },
    ] {
        assert!(AutoencoderKL::new(vb.clone(), config).is_err());
    }
}

#[test]
fn logvar_is_clamped() {
    let dev = Device::Cpu;
    let mean = Tensor::zeros((1, 1, 1, 2), DType::F32, &dev).unwrap();
    let logvar = Tensor::new(&[[[[-100f32, 100.0]]]], &dev).unwrap();
    let dist = DiagonalGaussian::from_moments(&Tensor::cat(&[mean, logvar], 1).unwrap()).unwrap();
    let clamped = dist
        .logvar()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(clamped, vec![-30.0, 20.0]);
}
