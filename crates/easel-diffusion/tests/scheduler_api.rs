//! Scheduler API behaviour beyond diffusers parity (see `scheduler_parity.rs`):
//! names, presets, state resets and errors on bad input.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use easel_diffusion::schedulers::{
    build, img2img_start, BetaSchedule, Ddim, DdimInverse, DpmPlusPlus2M, EulerAncestral,
    PredictionType, Scheduler, SchedulerConfig, SchedulerKind, TimestepSpacing,
};

use common::max_abs_diff;

fn latent(seed: f32) -> Tensor {
    // Deterministic, non-trivial values without an RNG.
    let v: Vec<f32> = (0..64).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
    Tensor::from_vec(v, (1, 4, 4, 4), &Device::Cpu).unwrap()
}

fn model(x: &Tensor, t: usize) -> Result<Tensor> {
    x.affine(0.1, 0.0)? + latent(3.0).affine((t as f64 / 100.0).sin(), 0.0)?
}

fn err_text<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn run(s: &mut dyn Scheduler, x: Tensor) -> Tensor {
    let mut x = x.affine(s.init_noise_sigma(), 0.0).unwrap();
    for (i, t) in s.timesteps().to_vec().into_iter().enumerate() {
        let input = s.scale_model_input(x.clone(), t).unwrap();
        let eps = model(&input, t).unwrap();
        let noise = latent(100.0 + i as f32);
        x = s.step(&eps, t, &x, Some(&noise)).unwrap();
    }
    x
}

#[test]
fn kind_names_round_trip() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.name().parse::<SchedulerKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), kind.name());
    }
    assert_eq!(
        "ddim".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::Ddim
    );
    assert_eq!(
        "dpm++2m".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::DpmPlusPlus2M
    );
    assert_eq!(
        " Euler-A ".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::EulerAncestral
    );
    let e = err_text("pndm".parse::<SchedulerKind>());
    assert!(e.contains("pndm") && e.contains("euler-a"), "{e}");

    assert_eq!(
        "scaled_linear".parse::<BetaSchedule>().unwrap(),
        BetaSchedule::ScaledLinear
    );
    assert_eq!(
        "v_prediction".parse::<PredictionType>().unwrap(),
        PredictionType::VPrediction
    );
    assert_eq!(
        "trailing".parse::<TimestepSpacing>().unwrap(),
        TimestepSpacing::Trailing
    );
    assert!(err_text("sample".parse::<PredictionType>()).contains("sample"));
}

#[test]
fn sd15_preset_schedule() {
    let c = SchedulerConfig::sd15();
    assert_eq!(c, SchedulerConfig::default());
    assert_eq!(c.num_train_timesteps, 1000);
    assert_eq!(c.steps_offset, 1);
    assert!(!c.set_alpha_to_one && !c.clip_sample);
    let ac = c.alphas_cumprod().unwrap();
    assert_eq!(ac.len(), 1000);
    assert!((ac[0] - (1.0 - 0.00085)).abs() < 1e-12);
    assert!((ac[999] - 0.004_660).abs() < 1e-5, "{}", ac[999]);
    assert!(ac.windows(2).all(|w| w[1] < w[0]));

    let ddim = Ddim::new(&c, 10, 0.0).unwrap();
    assert_eq!(
        ddim.timesteps(),
        &[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    );
    let dpm = DpmPlusPlus2M::new(&c, 10).unwrap();
    assert_eq!(dpm.timesteps()[0], 901);
    assert_eq!(dpm.timesteps()[9], 91);
    let euler = EulerAncestral::new(&c, 50).unwrap();
    // diffusers: sqrt(sigma(981)^2 + 1) for the leading spacing.
    assert!((euler.init_noise_sigma() - 13.158_469).abs() < 1e-4);
    let inv = DdimInverse::new(&c, 10).unwrap();
    assert_eq!(inv.timesteps()[0], 1);
    assert_eq!(inv.timesteps()[9], 901);

    for cfg in [
        SchedulerConfig {
            beta_schedule: BetaSchedule::Linear,
            ..c.clone()
        },
        SchedulerConfig {
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            ..c.clone()
        },
    ] {
        let ac = cfg.alphas_cumprod().unwrap();
        assert!(ac.iter().all(|a| *a > 0.0 && *a < 1.0));
    }
}

#[test]
fn bad_steps_and_strength_are_errors() {
    let c = SchedulerConfig::sd15();
    for kind in SchedulerKind::ALL {
        let e = err_text(build(kind, &c, 0));
        assert!(e.contains("got 0"), "{kind}: {e}");
        let e = err_text(build(kind, &c, 1001));
        assert!(e.contains("1001"), "{kind}: {e}");
        let s = build(kind, &c, 50).unwrap();
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = err_text(s.timesteps_for_strength(bad));
            assert!(e.contains("strength"), "{kind}: {e}");
        }
        assert!(s.timesteps_for_strength(0.0).unwrap().is_empty());
        assert_eq!(s.timesteps_for_strength(1.0).unwrap(), s.timesteps());
    }
    assert!(err_text(DdimInverse::new(&c, 0)).contains("got 0"));
    assert!(img2img_start(10, 2.0).is_err());
    // steps_offset pushes the leading schedule past the last training timestep.
    let e = err_text(Ddim::new(&c, 1000, 0.0));
    assert!(e.contains("1000") && e.contains("steps_offset"), "{e}");
    let e = err_text(Ddim::new(&c, 10, -1.0));
    assert!(e.contains("eta"), "{e}");
    let e = err_text(Ddim::new(&c, 10, f64::NAN));
    assert!(e.contains("eta"), "{e}");
    let bad = SchedulerConfig {
        beta_start: 0.0,
        ..c.clone()
    };
    assert!(err_text(Ddim::new(&bad, 10, 0.0)).contains("beta_start"));
    let lin = SchedulerConfig {
        timestep_spacing: TimestepSpacing::Linspace,
        ..c
    };
    assert!(err_text(DdimInverse::new(&lin, 10)).contains("linspace"));
}

#[test]
fn bad_step_inputs_are_errors() {
    let c = SchedulerConfig::sd15();
    let x = latent(0.0);
    let eps = model(&x, 901).unwrap();
    for kind in SchedulerKind::ALL {
        let mut s = build(kind, &c, 10).unwrap();
        let t0 = s.timesteps()[0];
        let e = err_text(s.step(&eps, 900, &x, Some(&x)));
        assert!(
            e.contains("900") && e.contains("not in the schedule"),
            "{kind}: {e}"
        );
        let wrong = Tensor::zeros((1, 4, 4, 5), DType::F32, &Device::Cpu).unwrap();
        let e = err_text(s.step(&wrong, t0, &x, Some(&x)));
        assert!(e.contains("shape"), "{kind}: {e}");
        let e = err_text(s.add_noise(&x, x.clone(), 1000));
        assert!(e.contains("1000"), "{kind}: {e}");
        assert!(s.add_noise(&x, wrong.clone(), 500).is_err());
        let ints = Tensor::zeros((1, 4, 4, 4), DType::U32, &Device::Cpu).unwrap();
        assert!(s.step(&eps, t0, &ints, Some(&x)).is_err(), "{kind}");
    }

    // Ancestral schedulers want noise; deterministic ones ignore it.
    let mut euler = EulerAncestral::new(&c, 10).unwrap();
    assert!(euler.needs_noise());
    let e = err_text(euler.step(&eps, 901, &x, None));
    assert!(e.contains("noise"), "{e}");
    // The last Euler step adds no noise, so it may be omitted there.
    assert!(euler.step(&eps, 1, &x, None).is_ok());
    let bad_noise = Tensor::zeros((4, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(err_text(euler.step(&eps, 901, &x, Some(&bad_noise))).contains("noise shape"));

    let mut ddim1 = Ddim::new(&c, 10, 1.0).unwrap();
    assert!(ddim1.needs_noise());
    assert!(err_text(ddim1.step(&eps, 901, &x, None)).contains("noise"));
    let mut ddim0 = Ddim::new(&c, 10, 0.0).unwrap();
    assert!(!ddim0.needs_noise());
    let a = ddim0.step(&eps, 901, &x, None).unwrap();
    let b = ddim0.step(&eps, 901, &x, Some(&latent(9.0))).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn multistep_state_resets() {
    let c = SchedulerConfig::sd15();
    let mut dpm = DpmPlusPlus2M::new(&c, 12).unwrap();
    let first = run(&mut dpm, latent(1.0));
    // Running again without set_timesteps restarts at index 0: same result.
    let again = run(&mut dpm, latent(1.0));
    assert_eq!(max_abs_diff(&first, &again), 0.0);
    dpm.set_timesteps(12).unwrap();
    let reset = run(&mut dpm, latent(1.0));
    assert_eq!(max_abs_diff(&first, &reset), 0.0);
    // A fresh scheduler agrees, and a different step count differs.
    let fresh = run(&mut DpmPlusPlus2M::new(&c, 12).unwrap(), latent(1.0));
    assert_eq!(max_abs_diff(&first, &fresh), 0.0);
    dpm.set_timesteps(8).unwrap();
    assert_eq!(dpm.timesteps().len(), 8);
    let other = run(&mut dpm, latent(1.0));
    assert!(max_abs_diff(&first, &other) > 0.0);
}

#[test]
fn every_kind_denoises_to_finite_values() {
    for config in [
        SchedulerConfig::sd15(),
        SchedulerConfig::sd15_v_prediction(),
    ] {
        for kind in SchedulerKind::ALL {
            for steps in [1, 2, 3, 15, 50] {
                let mut s = build(kind, &config, steps).unwrap();
                assert_eq!(s.timesteps().len(), steps, "{kind}");
                let out = run(s.as_mut(), latent(2.0));
                let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(
                    v.iter().all(|x| x.is_finite()),
                    "{kind} {steps} steps: {v:?}"
                );
            }
        }
    }
}

#[test]
fn f64_and_bf16_samples_keep_their_dtype() {
    let c = SchedulerConfig::sd15();
    for dtype in [DType::F64, DType::BF16] {
        for kind in SchedulerKind::ALL {
            let mut s = build(kind, &c, 10).unwrap();
            let x = latent(0.0).to_dtype(dtype).unwrap();
            let t = s.timesteps()[0];
            let eps = model(&latent(0.0), t).unwrap();
            let noise = latent(5.0).to_dtype(dtype).unwrap();
            let out = s.step(&eps, t, &x, Some(&noise)).unwrap();
            assert_eq!(out.dtype(), dtype, "{kind}");
            let noisy = s.add_noise(&x, noise, t).unwrap();
            assert_eq!(noisy.dtype(), dtype, "{kind}");
        }
    }
}

#[test]
fn degenerate_schedules_are_errors() {
    let c = SchedulerConfig::sd15();
    // DPM's leading spacing divides by steps + 1: 1000 steps would repeat timesteps.
    let e = err_text(DpmPlusPlus2M::new(&c, 1000));
    assert!(e.contains("repeat"), "{e}");
    let huge_offset = SchedulerConfig {
        steps_offset: usize::MAX,
        ..c.clone()
    };
    for kind in SchedulerKind::ALL {
        assert!(build(kind, &huge_offset, 10).is_err(), "{kind}");
    }
    assert!(DdimInverse::new(&huge_offset, 10).is_err());
    let one_step = SchedulerConfig {
        num_train_timesteps: 1,
        ..c
    };
    assert!(build(SchedulerKind::Ddim, &one_step, 1).is_err());
}
