#!/usr/bin/env python3
"""Speed and peak memory of one Gatys iteration (loss forward + gradient to the picture) on
EfficientNet-Lite0 or VGG-19: easel against PyTorch, same weights, same pictures, same threads,
one run.

Not a test. Run from the repository root (builds the example first):

    /work/pyref/bin/python tools/ref/gatys_bench.py [--size 512] [--runs 3] [--threads 2]
        [--network lite0|vgg19]

`--network vgg19`: torchvision's VGG-19 at full widths with seeded random weights (no VGG
weights exist here; `vgg19_ref.init_`, seed 0), the loss of `tools/ref/vgg19_ref.py` (style at
relu1_1 ... relu5_1, content at relu4_2, the same weights).

Pictures: chelsea_cat (photo) and Starry Night (painting) resized to SIZE×SIZE (bicubic), `x` =
photo + 0.1 uniform noise (seed 0). The loss is `tools/ref/gatys_ref.py`'s (style at stem, dw1,
dw3, dw5, dw8; content at block5; weights 1, 1e5, 10). PyTorch runs in a child process with
`torch.set_num_threads(--threads)`: one warm-up evaluation (`zero_grad`, loss, `backward`), then
the median of --runs; easel runs `cargo run --release -p easel-fast --example bench_gatys` with
RAYON_NUM_THREADS = --threads. Peak memory is each process's VmHWM; "before" is its resident
memory after setup (weights, targets) and before the first evaluation. Prints a table with
easel / PyTorch (lower is better) and how far each side's f32 gradient to the picture is from
PyTorch's in float64 (computed after the timed runs and the peak memory reading).
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

ROOT = Path(__file__).resolve().parents[2]


def status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return 0.0


def vgg19_net(weights):
    """The torchvision VGG-19 of `weights` (a safetensors state dict), as vgg19_ref.Net."""
    from safetensors.torch import load_file

    import vgg19_ref

    model = vgg19_ref.TorchvisionVGG19(scale=1)
    model.load_state_dict(load_file(weights), strict=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return vgg19_ref.Net(model.features, vgg19_ref.TORCHVISION_RELU,
                         lambda x: (x - vgg19_ref.MEAN) / vgg19_ref.STD)


def objective(t, vgg19, dtype):
    """The loss on the photo and painting of `t`, in `dtype`."""
    import gatys_ref
    import vgg19_ref

    photo, style = t["photo"].to(dtype), t["style"].to(dtype)
    if vgg19:
        net = vgg19_net(vgg19)
        net.seq.to(dtype)
        return vgg19_ref.Objective(net, photo, style)
    net = gatys_ref.load_lite0().to(dtype)
    for p in net.parameters():
        p.requires_grad_(False)
    return gatys_ref.Objective(net, photo, [style])


def torch_child(path, runs, threads, vgg19):
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))

    torch.set_num_threads(threads)
    t = load_file(path)
    obj = objective(t, vgg19, torch.float32)
    rss_before = status_mib("VmRSS:")
    x = t["x"].clone().requires_grad_(True)
    times = []
    loss = 0.0
    grad = None
    for i in range(runs + 1):
        start = time.perf_counter()
        x.grad = None
        total = obj(x)[3]
        total.backward()
        float(x.grad.sum())
        if i > 0:
            times.append((time.perf_counter() - start) * 1e3)
        loss = float(total)
        grad = x.grad.detach().clone()
    peak = status_mib("VmHWM:")
    # The gradient in float64 (untimed, after the peak was read), to see how far each f32 one is.
    x64 = t["x"].double().requires_grad_(True)
    objective(t, vgg19, torch.float64)(x64)[3].backward()
    save_file({"grad": grad.contiguous(), "grad64": x64.grad.detach().contiguous()},
              path + ".torch_grad.safetensors")
    print(json.dumps({"median_ms": statistics.median(times), "ms": times, "loss": loss,
                      "peak_mib": peak, "rss_before_mib": rss_before}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--network", choices=["lite0", "vgg19"], default="lite0",
                    help="EfficientNet-Lite0 (embedded weights) or VGG-19 (torchvision layout, "
                         "full widths, seeded random weights: no VGG weights exist here)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--vgg19-weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return torch_child(args.child, args.runs, args.threads, args.vgg19_weights)

    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gatys_ref

    torch.manual_seed(0)
    images = ROOT / "../shared/data/images"
    s = args.size
    photo = gatys_ref.load(images / "content/chelsea_cat.png", (s, s))
    style = gatys_ref.load(images / "style/vangogh_starry_night.jpg", (s, s))
    x = (photo + 0.1 * torch.rand_like(photo)).clamp(0, 1)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"input_{s}.safetensors")
        save_file({"photo": photo, "style": style, "x": x}, path)
        vgg = []
        if args.network == "vgg19":
            import vgg19_ref

            model = vgg19_ref.TorchvisionVGG19(scale=1)
            vgg19_ref.init_(model, torch.Generator().manual_seed(0))
            weights = os.path.join(d, "vgg19.safetensors")
            save_file({k: v for k, v in model.state_dict().items() if k.startswith("features.")},
                      weights)
            vgg = ["--vgg19-weights", weights]
        subprocess.run(["cargo", "build", "--release", "-p", "easel-fast", "--example", "bench_gatys"],
                       cwd=ROOT, check=True)
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        py = subprocess.run([sys.executable, __file__, "--child", path, "--runs", str(args.runs),
                             "--threads", str(args.threads)] + vgg,
                            capture_output=True, text=True, check=True)
        torch_res = json.loads(py.stdout.strip().splitlines()[-1])
        easel_grad = path + ".easel_grad.safetensors"
        ez = subprocess.run([str(ROOT / "target/release/examples/bench_gatys"), "--input", path,
                             "--runs", str(args.runs), "--grad-out", easel_grad]
                            + [a.replace("--vgg19-weights", "--vgg19") for a in vgg],
                            capture_output=True, text=True, check=True, env=env)
        easel_res = json.loads(ez.stdout.strip().splitlines()[-1])
        from safetensors.torch import load_file

        ref = load_file(path + ".torch_grad.safetensors")
        g64 = ref["grad64"]
        g_easel = load_file(easel_grad)["grad"].double()
        scale, norm = g64.abs().max(), g64.norm()
        grad_err = {name: (float((g - g64).abs().max() / scale), float((g - g64).norm() / norm))
                    for name, g in [("PyTorch", ref["grad"].double()), ("easel", g_easel)]}
    print(f"{args.network}, size {s}², {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| side | median ms | all ms | loss | peak MiB | before MiB |")
    print("|---|---|---|---|---|---|")
    for name, r in [("PyTorch", torch_res), ("easel", easel_res)]:
        ms = ", ".join(f"{v:.0f}" for v in r["ms"])
        print(f"| {name} | {r['median_ms']:.0f} | {ms} | {r['loss']:.6g} | {r['peak_mib']:.0f} | {r['rss_before_mib']:.0f} |")
    print("gradient to the picture against PyTorch's in float64, max |f32 - f64| / max |f64| "
          "(L2 |f32 - f64| / |f64|): "
          + ", ".join(f"{k} {m:.1e} ({l2:.1e})" for k, (m, l2) in grad_err.items()))
    print(f"easel / PyTorch: time {easel_res['median_ms'] / torch_res['median_ms']:.2f}x, "
          f"peak {easel_res['peak_mib'] / torch_res['peak_mib']:.2f}x, "
          f"peak over before {(easel_res['peak_mib'] - easel_res['rss_before_mib']) / max(1.0, torch_res['peak_mib'] - torch_res['rss_before_mib']):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
