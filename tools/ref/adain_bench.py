#!/usr/bin/env python3
"""Speed of easel's AdaIN against the same network in PyTorch, same device, sizes and threads.

Not a test. Run from the repository root:

    /work/venv/bin/python tools/ref/adain_bench.py [--sizes 512 1024] [--runs 5] [--threads 2]
    python tools/ref/adain_bench.py --device cuda --dtype f16 --easel /tmp/easel --runs 50


PyTorch: naoto0804/pytorch-AdaIN's `vgg` (to relu4_1) and `decoder` at full width (64, 128, 256,
512; `make_vgg` / `make_decoder` of tools/ref/adain_ref.py), random weights (seed 0), eval mode,
`torch.inference_mode()`, `torch.set_num_threads(--threads)`, default backends (oneDNN
convolutions). One stylization = encode the content (SIZE x SIZE) and the style (SIZE x SIZE) to
relu4_1, AdaIN (alpha 1), decode: what `test.py` does per pair. Median of --runs runs after 2
warm-up runs.

easel: `cargo run --release -p easel-fast --example bench_adain -- --size SIZE --runs R` with
RAYON_NUM_THREADS = --threads, in the same run, right after PyTorch at each size; or, with
`--easel BIN` (required for CUDA, where no cargo is needed), `BIN bench --workload adain --size
SIZE --device D --dtype T --runs R --json` (the same network with seeded random weights; each
timed run between two device synchronisations). Prints a table with the ratio easel / PyTorch
(lower is better); `--json FILE` writes it as JSON too (tools/gpu/check.sh reads it).

On CUDA (`--device cuda`), PyTorch runs with cuDNN autotuning (`cudnn.benchmark`), each timed
run between two `torch.cuda.synchronize()`; with `--dtype f16` the networks run in half
precision and AdaIN's statistics in f32, as easel does.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adain_ref import adaptive_instance_normalization, init_, make_decoder, make_vgg  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FULL = (64, 128, 256, 512)


def median_ms(fn, runs: int, sync=lambda: None, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def picture(n: int, phase: float) -> torch.Tensor:
    """The same smooth test picture as bench_adain.rs."""
    y = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1)
    x = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n)
    c = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1)
    return 0.5 + 0.45 * torch.sin(x * 0.031 + c + phase) * torch.cos(y * 0.017)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch-only", action="store_true", help="time PyTorch only")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="f16 needs --device cuda")
    ap.add_argument("--easel", help="easel binary: time `easel bench --workload adain` (needed on CUDA)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", help="also write the table to this file as JSON")
    args = ap.parse_args()
    if args.dtype == "f16" and args.device != "cuda":
        raise SystemExit("--dtype f16 needs --device cuda")
    if args.device == "cuda" and not (args.easel or args.torch_only):
        raise SystemExit("--device cuda needs --easel BIN (a CUDA build of easel)")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if args.dtype == "f16" else torch.float32
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    vgg, decoder = make_vgg(FULL), make_decoder(FULL)
    init_(vgg, gen)
    init_(decoder, gen)
    enc = vgg[:31].eval().to(device, dtype)
    decoder.eval().to(device, dtype)

    def stylize(content, style):
        with torch.inference_mode():
            t = adaptive_instance_normalization(enc(content).float(), enc(style).float())
            return decoder(t.to(dtype))

    if not args.torch_only and not args.easel:
        build = ["cargo", "build", "--release", "-q", "-p", "easel-fast", "--example", "bench_adain"]
        subprocess.run(build, cwd=ROOT, check=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    rows = []
    for size in args.sizes:
        content = picture(size, 0.0).to(device, dtype)
        style = picture(size, 1.0).to(device, dtype)
        theirs = median_ms(lambda: stylize(content, style), args.runs, sync, args.warmup)
        mine = None
        if args.easel:
            cmd = [args.easel, "bench", "--workload", "adain", "--size", str(size), "--device",
                   args.device, "--dtype", args.dtype, "--runs", str(args.runs), "--warmup",
                   str(args.warmup), "--json"]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            mine = json.loads(out)["workloads"][0]["median_ms"]
        elif not args.torch_only:
            cmd = ["cargo", "run", "--release", "-q", "-p", "easel-fast", "--example", "bench_adain", "--",
                   "--size", str(size), "--runs", str(args.runs)]
            out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
            mine = json.loads(out.strip().splitlines()[-1])["stylize_ms"]
        rows.append((size, theirs, mine))

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"PyTorch {torch.__version__}, {where}, {args.dtype}, median of {args.runs} runs "
          f"(content and style SIZE x SIZE, full-width AdaIN)")
    print(f"{'size':<12}{'PyTorch ms':>14}{'easel ms':>12}{'easel/PyTorch':>16}")
    for size, theirs, mine in rows:
        mine_s = f"{mine:.1f}" if mine is not None else "-"
        ratio = f"{mine / theirs:.2f}x" if mine is not None else "-"
        print(f"{f'{size}x{size}':<12}{theirs:>14.1f}{mine_s:>12}{ratio:>16}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "dtype": args.dtype, "runs": args.runs, "warmup": args.warmup,
                       "torch": torch.__version__,
                       "rows": [{"size": size, "pytorch_ms": theirs, "easel_ms": mine,
                                 "ratio": None if mine is None else mine / theirs}
                                for size, theirs, mine in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
