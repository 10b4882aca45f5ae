//! Golden parity of easel's schedulers with diffusers.
//!
//! The fixture `tests/fixtures/schedulers.safetensors` is written by
//! `tools/ref/schedulers_ref.py` (torch + diffusers on CPU, fixed seeds; see the
//! script's docstring for its keys). Both sides use the same stand-in model,
//! `model(x, t) = 0.1 * x + sin(t / 100) * c`, fed with
//! `scale_model_input(latents, t)`, and the same recorded ancestral noise.
//!
//! Checks: timesteps equal exactly; every intermediate sample within 1e-4
//! (max abs, f32); `add_noise`; img2img timesteps and runs; DDIM inversion and
//! its round trip. Run with `--nocapture` to see the errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor};
use easel_diffusion::schedulers::{
    build, img2img_start, Ddim, DdimInverse, DpmPlusPlus2M, EulerAncestral, PredictionType,
    Scheduler, SchedulerConfig, SchedulerKind, TimestepSpacing,
};

use common::{cached, max_abs_diff, tensor};

const TOL: f32 = 1e-4;

fn fixtures() -> &'static HashMap<String, Tensor> {
    cached("schedulers.safetensors")
}

fn get(key: &str) -> Tensor {
    tensor(fixtures(), key)
}

fn ints(key: &str) -> Vec<usize> {
    get(key)
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

fn model(x: &Tensor, t: usize) -> Result<Tensor> {
    let c = get("c");
    x.affine(0.1, 0.0)? + c.affine((t as f64 / 100.0).sin(), 0.0)?
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Ddim(f64),
    Dpm,
    EulerA,
}

fn make(which: Which, config: &SchedulerConfig, steps: usize) -> Box<dyn Scheduler> {
    match which {
        Which::Ddim(eta) => Box::new(Ddim::new(config, steps, eta).unwrap()),
        Which::Dpm => Box::new(DpmPlusPlus2M::new(config, steps).unwrap()),
        Which::EulerA => Box::new(EulerAncestral::new(config, steps).unwrap()),
    }
}

fn sched_key(which: Which) -> &'static str {
    match which {
        Which::Ddim(_) => "ddim",
        Which::Dpm => "dpm",
        Which::EulerA => "euler_a",
    }
}

/// Runs the denoising loop over `timesteps` from `latents`, comparing every
/// sample with `expected[offset + i]`; returns the worst error and the final sample.
fn run_and_compare(
    s: &mut dyn Scheduler,
    timesteps: &[usize],
    mut latents: Tensor,
    expected: &Tensor,
    offset: usize,
    noise: Option<&Tensor>,
    what: &str,
) -> (f32, Tensor) {
    let mut worst = 0f32;
    for (i, &t) in timesteps.iter().enumerate() {
        let input = s.scale_model_input(latents.clone(), t).unwrap();
        let eps = model(&input, t).unwrap();
        let n = noise.map(|n| n.get(i).unwrap());
        latents = s.step(&eps, t, &latents, n.as_ref()).unwrap();
        let want = expected.get(offset + i).unwrap();
        let err = max_abs_diff(&latents, &want);
        assert!(
            err <= TOL,
            "{what}: step {i} (t = {t}): max abs err {err:e} > {TOL:e}"
        );
        worst = worst.max(err);
    }
    (worst, latents)
}

/// (fixture case, scheduler, steps, prediction override, spacing override)
type Case = (
    &'static str,
    Which,
    usize,
    Option<PredictionType>,
    Option<TimestepSpacing>,
);

const CASES: &[Case] = &[
    ("ddim_eta0_n10", Which::Ddim(0.0), 10, None, None),
    ("ddim_eta0_n25", Which::Ddim(0.0), 25, None, None),
    ("ddim_eta1_n10", Which::Ddim(1.0), 10, None, None),
    ("ddim_eta1_n25", Which::Ddim(1.0), 25, None, None),
    (
        "ddim_v_n10",
        Which::Ddim(0.0),
        10,
        Some(PredictionType::VPrediction),
        None,
    ),
    (
        "ddim_trailing_n10",
        Which::Ddim(0.0),
        10,
        None,
        Some(TimestepSpacing::Trailing),
    ),
    (
        "ddim_linspace_n10",
        Which::Ddim(0.0),
        10,
        None,
        Some(TimestepSpacing::Linspace),
    ),
    ("dpm_n10", Which::Dpm, 10, None, None),
    ("dpm_n25", Which::Dpm, 25, None, None),
    (
        "dpm_v_n10",
        Which::Dpm,
        10,
        Some(PredictionType::VPrediction),
        None,
    ),
    (
        "dpm_linspace_n20",
        Which::Dpm,
        20,
        None,
        Some(TimestepSpacing::Linspace),
    ),
    (
        "dpm_trailing_n10",
        Which::Dpm,
        10,
        None,
        Some(TimestepSpacing::Trailing),
    ),
    ("euler_a_n10", Which::EulerA, 10, None, None),
    ("euler_a_n25", Which::EulerA, 25, None, None),
    (
        "euler_a_v_n10",
        Which::EulerA,
        10,
        Some(PredictionType::VPrediction),
        None,
    ),
    (
        "euler_a_linspace_n10",
        Which::EulerA,
        10,
        None,
        Some(TimestepSpacing::Linspace),
    ),
    (
        "euler_a_trailing_n10",
        Which::EulerA,
        10,
        None,
        Some(TimestepSpacing::Trailing),
    ),
];

#[test]
fn full_runs_match_diffusers() {
    for &(name, which, steps, prediction, spacing) in CASES {
        let mut config = SchedulerConfig::sd15();
        if let Some(p) = prediction {
            config.prediction_type = p;
        }
        if let Some(s) = spacing {
            config.timestep_spacing = s;
        }
        let mut s = make(which, &config, steps);
        let p = format!("run/{name}/");
        let want_ts = ints(&(p.clone() + "timesteps"));
        assert_eq!(s.timesteps(), &want_ts[..], "{name}: timesteps");

        let want_sigma = get(&(p.clone() + "init_noise_sigma"))
            .to_vec1::<f64>()
            .unwrap()[0];
        let sigma = s.init_noise_sigma();
        assert!(
            (sigma - want_sigma).abs() <= 1e-5 * want_sigma,
            "{name}: init_noise_sigma {sigma} vs diffusers {want_sigma}"
        );

        let latents = get("x_init").affine(sigma, 0.0).unwrap();
        let noise = fixtures().get(&(p.clone() + "noise"));
        assert_eq!(noise.is_some(), s.needs_noise(), "{name}: needs_noise");
        let samples = get(&(p + "samples"));
        let ts = s.timesteps().to_vec();
        let (worst, _) = run_and_compare(s.as_mut(), &ts, latents, &samples, 0, noise, name);
        eprintln!("{name:>22}: {steps:>2} steps, worst sample max abs err {worst:.2e}");
    }
}

#[test]
fn img2img_timesteps_match_diffusers() {
    let config = SchedulerConfig::sd15();
    for which in [Which::Ddim(0.0), Which::Dpm, Which::EulerA] {
        let s = make(which, &config, 50);
        let ts = s.timesteps_for_strength(0.7).unwrap();
        assert_eq!(ts.len(), 35);
        let want = ints(&format!("img2img50/{}/timesteps", sched_key(which)));
        assert_eq!(ts, &want[..], "{which:?}");
    }
    assert_eq!(img2img_start(50, 0.7).unwrap(), 15);
    assert_eq!(img2img_start(50, 1.0).unwrap(), 0);
    assert_eq!(img2img_start(50, 0.0).unwrap(), 50);
}

#[test]
fn img2img_runs_match_diffusers() {
    let config = SchedulerConfig::sd15();
    for which in [Which::Ddim(0.0), Which::Dpm, Which::EulerA] {
        let key = sched_key(which);
        let p = format!("img2img/{key}/");
        let mut s = make(which, &config, 20);
        let start = ints(&(p.clone() + "start"))[0];
        assert_eq!(img2img_start(20, 0.7).unwrap(), start);
        let ts = s.timesteps_for_strength(0.7).unwrap().to_vec();
        assert_eq!(ts, ints(&(p.clone() + "timesteps")), "{key}: timesteps");

        let samples = get(&(p.clone() + "samples"));
        let latents = s.add_noise(&get("x0"), get("x0_noise"), ts[0]).unwrap();
        let err0 = max_abs_diff(&latents, &samples.get(0).unwrap());
        assert!(err0 <= TOL, "{key}: img2img add_noise err {err0:e}");
        let noise = fixtures().get(&(p + "noise"));
        let what = format!("img2img {key}");
        let (worst, _) = run_and_compare(s.as_mut(), &ts, latents, &samples, 1, noise, &what);
        eprintln!(
            "{what:>22}: {} steps, worst max abs err {:.2e}",
            ts.len(),
            worst.max(err0)
        );
    }
}

#[test]
fn add_noise_matches_diffusers() {
    let config = SchedulerConfig::sd15();
    for which in [Which::Ddim(0.0), Which::Dpm, Which::EulerA] {
        let key = sched_key(which);
        let p = format!("add_noise/{key}/");
        let s = make(which, &config, ints(&(p.clone() + "steps"))[0]);
        let out = get(&(p.clone() + "out"));
        for (i, t) in ints(&(p + "timesteps")).into_iter().enumerate() {
            let got = s.add_noise(&get("x0"), get("x0_noise"), t).unwrap();
            let err = max_abs_diff(&got, &out.get(i).unwrap());
            assert!(err <= TOL, "{key}: add_noise at t = {t}: err {err:e}");
            eprintln!("add_noise {key:>8} t = {t:>3}: max abs err {err:.2e}");
        }
    }
}

#[test]
fn ddim_inversion_round_trip_matches_diffusers() {
    let config = SchedulerConfig::sd15();
    let x0 = get("x0");
    for n in [10usize, 25] {
        let p = format!("inv/n{n}/");
        let mut inv = DdimInverse::new(&config, n).unwrap();
        assert_eq!(inv.timesteps(), &ints(&(p.clone() + "timesteps"))[..]);
        let ts = inv.timesteps().to_vec();
        let latents = get(&(p.clone() + "latents"));
        let (inv_err, xt) =
            run_and_compare(&mut inv, &ts, x0.clone(), &latents, 0, None, "inversion");

        // DDIM back from our own inverted latent: the whole round trip is ours.
        let mut fwd = Ddim::new(&config, n, 0.0).unwrap();
        assert_eq!(fwd.timesteps(), &ints(&(p.clone() + "recon_timesteps"))[..]);
        let ts = fwd.timesteps().to_vec();
        let recon = get(&(p.clone() + "recon"));
        let (rec_err, x) = run_and_compare(&mut fwd, &ts, xt, &recon, 0, None, "reconstruction");
        let ours = max_abs_diff(&x, &x0);
        let theirs = get(&(p + "roundtrip_err")).to_vec1::<f64>().unwrap()[0] as f32;
        assert!(
            (ours - theirs).abs() <= TOL,
            "n = {n}: round-trip err {ours:e} vs diffusers {theirs:e}"
        );
        eprintln!(
            "inversion n = {n:>2}: inverted err {inv_err:.2e}, reconstruction err {rec_err:.2e}, \
             round trip |x0 - recon| ours {ours:.4e} diffusers {theirs:.4e}"
        );
    }
}

#[test]
fn half_precision_samples_keep_their_dtype() {
    let config = SchedulerConfig::sd15();
    for kind in SchedulerKind::ALL {
        let mut s = build(kind, &config, 10).unwrap();
        let x = get("x_init").to_dtype(DType::F16).unwrap();
        let t = s.timesteps()[0];
        let eps = model(&x.to_dtype(DType::F32).unwrap(), t).unwrap();
        let noise = get("x0_noise");
        let out = s.step(&eps, t, &x, Some(&noise)).unwrap();
        assert_eq!(out.dtype(), DType::F16, "{kind}");
    }
}
