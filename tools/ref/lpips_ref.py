#!/usr/bin/env python3
"""Reference LPIPS distances for `crates/easel-metrics/tests/lpips.rs`.

Usage (from the repository root; the venv has tools/ref/requirements.txt and lpips):

    /work/pyref/bin/pip install --no-deps lpips==0.1.4 torchvision tqdm
    /work/pyref/bin/python tools/ref/lpips_ref.py

Made with torch 2.15.0, torchvision 0.29.2, lpips 0.1.4.

The real AlexNet backbone is 10 MB and is not shipped; the lpips package's own `LPIPS` module
(scaling layer, `normalize_tensor`, squared differences, `NetLinLayer`, `spatial_average`) runs
on a TINY AlexNet: torchvision's `alexnet().features` layout (indices 0, 3, 6, 8, 10 are the
convolutions; kernels 11/5/3/3/3, stride 4 then 1, max pools 3/2) with channels
8, 16, 24, 16, 16, and random positive linear layers of those widths (seed 0).

Writes to `crates/easel-metrics/tests/fixtures/`:

* `lpips_tiny.safetensors`: `features.{0,3,6,8,10}.{weight,bias}` (torchvision's state-dict keys)
  and `lin{0..4}.model.1.weight` (lpips' keys; `[1, C, 1, 1]`);
* `lpips_ref.json`: `lpips(a, b, normalize=True)` for pairs of the metrics fixture PNGs.
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import lpips

WIDTHS = [8, 16, 24, 16, 16]
FIX = Path(__file__).resolve().parents[2] / "crates/easel-metrics/tests/fixtures"
PAIRS = [
    ("metrics_cat_blur_a.png", "metrics_cat_blur_b.png"),
    ("metrics_coffee_noise_a.png", "metrics_coffee_noise_b.png"),
    ("metrics_hopper_scream_a.png", "metrics_hopper_scream_b.png"),
    ("metrics_astronaut_recolour_a.png", "metrics_astronaut_recolour_b.png"),
]


def tiny_features():
    w = WIDTHS
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, w[0], 11, stride=4, padding=2), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(3, 2),
        torch.nn.Conv2d(w[0], w[1], 5, padding=2), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(3, 2),
        torch.nn.Conv2d(w[1], w[2], 3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(w[2], w[3], 3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(w[3], w[4], 3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(3, 2),
    )


def picture(name):
    a = np.asarray(Image.open(FIX / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def main():
    torch.manual_seed(0)
    model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    features = tiny_features()
    for k, (start, end) in enumerate([(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]):
        part = torch.nn.Sequential()
        for i in range(start, end):
            part.add_module(str(i), features[i])
        setattr(model.net, f"slice{k + 1}", part)
    model.chns = WIDTHS
    lins = [lpips.NetLinLayer(c, use_dropout=True) for c in WIDTHS]
    for lin in lins:
        with torch.no_grad():
            lin.model[1].weight.copy_(torch.rand_like(lin.model[1].weight))
    model.lins = torch.nn.ModuleList(lins)
    model.eval()

    tensors = {f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}
    for k, lin in enumerate(lins):
        tensors[f"lin{k}.model.1.weight"] = lin.model[1].weight.detach().contiguous()
    save_file(tensors, FIX / "lpips_tiny.safetensors")

    cases = []
    with torch.no_grad():
        for a, b in PAIRS:
            d = model(picture(a), picture(b), normalize=True).item()
            cases.append({"a": a, "b": b, "lpips": d})
    out = {
        "versions": {"torch": torch.__version__, "lpips": "0.1.4"},
        "widths": WIDTHS,
        "cases": cases,
    }
    (FIX / "lpips_ref.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
