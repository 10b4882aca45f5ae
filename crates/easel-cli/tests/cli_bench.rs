//! `easel bench` on the tiny random models on the CPU: the JSON report's structure and that
//! every figure is positive and finite (timings are never compared with thresholds), and the
//! fixed-input parity check against a reference written from our own outputs.

use serde_json::Value;

mod common;

use common::{assert_success, easel_command, s, stderr};

fn bench(extra: &[&str]) -> Value {
    let mut args = vec![
        "bench", "--config", "tiny", "--device", "cpu", "--size", "64", "--runs", "2", "--warmup",
        "1", "--json",
    ];
    args.extend_from_slice(extra);
    let out = easel_command(&args)
        .output()
        .expect("the easel binary runs");
    assert_success(&out);
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn all_workloads_report_positive_finite_figures() {
    let report = bench(&["--workload", "all"]);
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["dtype"], "f32");
    assert_eq!(report["size"], 64);
    assert_eq!(report["runs"], 2);
    assert_eq!(report["warmup"], 1);
    assert_eq!(report["weights"]["kind"], "random");
    assert_eq!(report["weights"]["config"], "tiny");
    assert_eq!(report["attention"], "max-score-bytes-1073741824");
    assert_eq!(report["parity"], Value::Null);
    let workloads = report["workloads"].as_array().expect("a workloads array");
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "unet-cfg",
            "unet-controlnet",
            "vae-encode",
            "vae-decode",
            "stylize",
            "learn",
            "adain",
            "transformer"
        ]
    );
    for w in workloads {
        let name = w["name"].as_str().unwrap();
        assert_eq!(w["dtype"], "f32", "{name}");
        let min = positive(&w["min_ms"], &format!("{name}.min_ms"));
        let median = positive(&w["median_ms"], &format!("{name}.median_ms"));
        let p90 = positive(&w["p90_ms"], &format!("{name}.p90_ms"));
        positive(&w["mean_ms"], &format!("{name}.mean_ms"));
        assert!(
            min <= median && median <= p90,
            "{name}: {min} {median} {p90}"
        );
        let samples = w["samples_ms"].as_array().unwrap();
        assert_eq!(samples.len(), 2, "{name}");
        assert_eq!(w["runs"], 2);
        for x in samples {
            positive(x, &format!("{name} sample"));
        }
        positive(
            &w["peak_memory_bytes"],
            &format!("{name}.peak_memory_bytes"),
        );
        assert!(
            w["memory_kind"] == "cpu-vmhwm" || w["memory_kind"] == "cpu-vmhwm-since-start",
            "{name}: {}",
            w["memory_kind"]
        );
    }
}

/// The fast stylizers alone, in the order asked, with their dtype (the transformer's is f32
/// whatever --dtype says: `bench_fast`'s unit test; the CPU takes only f32).
#[test]
fn fast_workloads_run_alone_and_report_their_dtype() {
    let report = bench(&["--workload", "transformer,adain"]);
    let workloads = report["workloads"].as_array().unwrap();
    let got: Vec<(&str, &str)> = workloads
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w["dtype"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [("transformer", "f32"), ("adain", "f32")]);
    for w in workloads {
        positive(&w["median_ms"], "median_ms");
    }
}

#[test]
fn parity_compares_with_the_references_and_refuses_to_time_a_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    // Inputs in the layout bench_diffusers.py writes; the first run dumps our outputs.
    use candle_core::{DType, Device};
    let dev = Device::Cpu;
    let n = easel_bench::seeded_normal;
    let mut tensors = std::collections::HashMap::new();
    tensors.insert(
        "sample".to_string(),
        n(1, &[2, 4, 8, 8], DType::F32, &dev).unwrap(),
    );
    tensors.insert(
        "context".to_string(),
        n(2, &[2, 77, 32], DType::F32, &dev).unwrap(),
    );
    tensors.insert(
        "timestep".to_string(),
        candle_core::Tensor::new(&[500f32], &dev).unwrap(),
    );
    tensors.insert(
        "cond".to_string(),
        easel_bench::seeded_unit(3, &[2, 3, 64, 64], DType::F32, &dev).unwrap(),
    );
    tensors.insert(
        "latents".to_string(),
        n(4, &[1, 4, 8, 8], DType::F32, &dev).unwrap(),
    );
    let inputs = tmp.path().join("inputs.safetensors");
    candle_core::safetensors::save(&tensors, &inputs).unwrap();
    // A reference of the wrong shape is refused.
    let mut wrong = tensors.clone();
    wrong.insert(
        "ref/unet".to_string(),
        n(5, &[1, 4, 8, 8], DType::F32, &dev).unwrap(),
    );
    let wrong_path = tmp.path().join("wrong.safetensors");
    candle_core::safetensors::save(&wrong, &wrong_path).unwrap();
    let out = easel_command(&[
        "bench",
        "--config",
        "tiny",
        "--device",
        "cpu",
        "--size",
        "64",
        "--runs",
        "1",
        "--workload",
        "vae-decode",
        "--parity",
        s(&wrong_path),
    ])
    .output()
    .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("differs from the reference"),
        "{err}"
    );

    // Our own outputs as references: parity passes with zero error.
    let dump = tmp.path().join("ours.safetensors");
    let mut with_ref = tensors.clone();
    with_ref.insert(
        "ref/unet".to_string(),
        n(6, &[2, 4, 8, 8], DType::F32, &dev).unwrap(),
    );
    let first = tmp.path().join("first.safetensors");
    candle_core::safetensors::save(&with_ref, &first).unwrap();
    // The random reference is far off: refused, nothing timed, but the dump is written first.
    let out = easel_command(&[
        "bench",
        "--config",
        "tiny",
        "--device",
        "cpu",
        "--size",
        "64",
        "--runs",
        "1",
        "--workload",
        "vae-decode",
        "--parity",
        s(&first),
        "--parity-dump",
        s(&dump),
    ])
    .output()
    .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("parity failed, nothing timed"), "{err}");
    let ours = candle_core::safetensors::load(&dump, &dev).unwrap();
    let mut good = tensors.clone();
    for name in ["unet", "unet_controlnet", "vae_decode"] {
        good.insert(format!("ref/{name}"), ours[name].clone());
    }
    let good_path = tmp.path().join("good.safetensors");
    candle_core::safetensors::save(&good, &good_path).unwrap();
    let report = bench(&["--workload", "vae-decode", "--parity", s(&good_path)]);
    let parity = &report["parity"];
    assert_eq!(parity["pass"], true);
    assert_eq!(parity["max_rel_err"], 0.0);
    for name in ["unet", "unet_controlnet", "vae_decode"] {
        assert_eq!(parity["outputs"][name]["rel_err"], 0.0, "{name}");
    }
    assert_eq!(report["workloads"].as_array().unwrap().len(), 1);
}
