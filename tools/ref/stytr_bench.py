#!/usr/bin/env python3
"""Speed of easel's StyTr² network against the same network in PyTorch (CPU), same weights, same threads.

Not a test. Run from the repository root (builds the example first):

    /work/venv/bin/python tools/ref/stytr_bench.py [--sizes 512 1024] [--runs 2] [--threads 2] [--pyramidal]

Both sides run the full-size network (d_model 512, 8 heads, 3+3+3 layers, feed-forward 2048, CNN
decoder 512→3; CAPE, or the pyramidal encoding with --pyramidal) with the same random weights
(seed 0, `tools/ref/stytr_ref.py`'s modules and init), photo and style both SIZE×SIZE.

PyTorch: `stytr_ref.stylize` under `torch.inference_mode()`, `torch.set_num_threads(--threads)`;
its attention is `nn.MultiheadAttention(need_weights=False)`, i.e. `scaled_dot_product_attention`
(the published code's `need_weights=True` materialises every `heads × N × N` score matrix: 8 GiB
per attention at 1024², more than this machine has). easel: `cargo run --release -p easel-fast
--example bench_stytr` with RAYON_NUM_THREADS = --threads, in the same run. Each side: one warm-up
run, then the median of --runs. Also prints the largest difference between the two outputs.
Prints a table with the ratio easel / PyTorch (lower is better).

With `--easel BIN` (needed on CUDA, where there is no cargo: `--device cuda --easel /tmp/easel`)
easel's side is `BIN bench --workload transformer --size SIZE --device D --json` instead: the
same network with easel's own seeded random weights, so the timing is compared but the outputs
are not (no max abs diff). On CUDA PyTorch runs in f32 with TF32 off (as easel's StyTr² does),
each timed run between two `torch.cuda.synchronize()`. `--json FILE` writes the table as JSON
(tools/gpu/check.sh reads it).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stytr_ref as ref  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def picture(n: int, phase: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    chans = [0.5 + 0.45 * torch.sin(x * 0.031 + c + phase) * torch.cos(y * 0.017) for c in range(3)]
    return torch.stack(chans)[None].contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pyramidal", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--easel", help="easel binary: time `easel bench --workload transformer` (needed on CUDA)")
    ap.add_argument("--json", help="also write the table to this file as JSON")
    args = ap.parse_args()
    if args.device == "cuda" and not args.easel:
        raise SystemExit("--device cuda needs --easel BIN (a CUDA build of easel)")
    if args.pyramidal and args.easel:
        raise SystemExit("--pyramidal compares outputs through the example: leave out --easel")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    pe = "ppe" if args.pyramidal else "cape"

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = ref.ORIGINAL
    transformer = ref.Transformer(cfg, pe)
    ref.init_(transformer, gen)
    embedding = ref.PatchEmbed(cfg["d_model"])
    ref.init_(embedding, gen)
    decoder = ref.make_decoder(cfg["widths"])
    ref.init_(decoder, gen)
    for m in (transformer, embedding, decoder):
        m.eval()

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    if not args.easel:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "easel-fast", "--example", "bench_stytr"],
                       cwd=ROOT, check=True, env=env)
    exe = ROOT / "target" / "release" / "examples" / "bench_stytr"

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(transformer.state_dict(), tmp / "transformer.pth")
        torch.save(embedding.state_dict(), tmp / "embedding.pth")
        torch.save(decoder.state_dict(), tmp / "decoder.pth")
        for m in (transformer, embedding, decoder):
            m.to(device)
        for n in args.sizes:
            content, style = picture(n, 0.0), picture(n, 1.0)
            save_file({"content": content, "style": style}, str(tmp / f"input_{n}.safetensors"))
            content, style = content.to(device), style.to(device)
            with torch.inference_mode():
                out = ref.stylize(embedding, transformer, decoder, content, style)  # warm-up
                times = []
                for _ in range(args.runs):
                    sync()
                    t = time.perf_counter()
                    out = ref.stylize(embedding, transformer, decoder, content, style)
                    sync()
                    times.append((time.perf_counter() - t) * 1e3)
            torch_ms = statistics.median(times)
            diff = None
            if args.easel:
                cmd = [args.easel, "bench", "--workload", "transformer", "--size", str(n), "--device",
                       args.device, "--runs", str(args.runs), "--warmup", "1", "--json"]
                res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                easel_ms = json.loads(res.stdout)["workloads"][0]["median_ms"]
            else:
                cmd = [str(exe), "--dir", str(tmp), "--size", str(n), "--runs", str(args.runs)]
                if args.pyramidal:
                    cmd.append("--pyramidal")
                res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                easel_ms = json.loads(res.stdout.strip().splitlines()[-1])["median_ms"]
                ours = load_file(str(tmp / f"easel_{n}.safetensors"))["out"]
                diff = float((ours - out.cpu()).abs().max())
            rows.append((n, torch_ms, easel_ms, diff))
            diff_s = "-" if diff is None else f"{diff:.1e}"
            print(f"{n}: pytorch {torch_ms:.0f} ms, easel {easel_ms:.0f} ms, max |diff| {diff_s}", flush=True)

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"\nStyTr² ({pe}), {where}, f32, median of {args.runs} runs after 1 warm-up "
          f"(torch {torch.__version__})")
    print("| size | PyTorch ms | easel ms | easel / PyTorch | max abs diff |")
    print("|---|---|---|---|---|")
    for n, t, e, d in rows:
        print(f"| {n}² | {t:.0f} | {e:.0f} | {e / t:.2f}× | {'-' if d is None else f'{d:.1e}'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "position_encoding": pe, "runs": args.runs, "torch": torch.__version__,
                       "rows": [{"size": n, "pytorch_ms": t, "easel_ms": e, "ratio": e / t, "max_abs_diff": d}
                                for n, t, e, d in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
