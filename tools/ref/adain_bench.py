#!/usr/bin/env python3
"""Speed of easel's AdaIN (CPU) against the same network in PyTorch (CPU), same sizes, same threads.

Not a test. Run from the repository root:

    /work/venv/bin/python tools/ref/adain_bench.py [--sizes 512 1024] [--runs 5] [--threads 2]

PyTorch: naoto0804/pytorch-AdaIN's `vgg` (to relu4_1) and `decoder` at full width (64, 128, 256,
512; `make_vgg` / `make_decoder` of tools/ref/adain_ref.py), random weights (seed 0), eval mode,
`torch.inference_mode()`, `torch.set_num_threads(--threads)`, default backends (oneDNN
convolutions). One stylization = encode the content (SIZE x SIZE) and the style (SIZE x SIZE) to
relu4_1, AdaIN (alpha 1), decode: what `test.py` does per pair. Median of --runs runs after 2
warm-up runs.

easel: `cargo run --release -p easel-fast --example bench_adain -- --size SIZE --runs R` with
RAYON_NUM_THREADS = --threads, in the same run, right after PyTorch at each size. Prints a table
with the ratio easel / PyTorch (lower is better).
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


def median_ms(fn, runs: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
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
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    vgg, decoder = make_vgg(FULL), make_decoder(FULL)
    init_(vgg, gen)
    init_(decoder, gen)
    enc = vgg[:31].eval()
    decoder.eval()

    def stylize(content, style):
        with torch.inference_mode():
            t = adaptive_instance_normalization(enc(content), enc(style))
            return decoder(t)

    if not args.torch_only:
        build = ["cargo", "build", "--release", "-q", "-p", "easel-fast", "--example", "bench_adain"]
        subprocess.run(build, cwd=ROOT, check=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    rows = []
    for size in args.sizes:
        content, style = picture(size, 0.0), picture(size, 1.0)
        theirs = median_ms(lambda: stylize(content, style), args.runs)
        mine = None
        if not args.torch_only:
            cmd = ["cargo", "run", "--release", "-q", "-p", "easel-fast", "--example", "bench_adain", "--",
                   "--size", str(size), "--runs", str(args.runs)]
            out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
            mine = json.loads(out.strip().splitlines()[-1])["stylize_ms"]
        rows.append((size, theirs, mine))

    print(f"PyTorch {torch.__version__}, {args.threads} threads, median of {args.runs} runs "
          f"(content and style SIZE x SIZE, full-width AdaIN)")
    print(f"{'size':<12}{'PyTorch ms':>14}{'easel ms':>12}{'easel/PyTorch':>16}")
    for size, theirs, mine in rows:
        mine_s = f"{mine:.1f}" if mine is not None else "-"
        ratio = f"{mine / theirs:.2f}x" if mine is not None else "-"
        print(f"{f'{size}x{size}':<12}{theirs:>14.1f}{mine_s:>12}{ratio:>16}")


if __name__ == "__main__":
    main()
