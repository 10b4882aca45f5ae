#!/usr/bin/env python3
"""Reference Gatys losses, gradients and optimiser trajectories for
`crates/easel-fast/tests/gatys_parity.rs`, on the EfficientNet-Lite0 of
`tools/ref/efficientnet_ref.py` (the embedded f16-rounded weights).

The loss is written out as `easel_fast::gatys` documents it: style at stem, dw1, dw3, dw5, dw8
(Gram `F F^T / (C H W)`, masked: `(F m)(F m)^T / (C sum m^2)` against the region's own
painting's Gram, `mean((G - T)^2)` summed), content at block5 (`mean((F - P)^2)`), total
variation `mean(dy^2) + mean(dx^2)`; total = 1 * content + 1e5 * style + 10 * tv. The masks are
brought to each feature map by the same box filter as easel (`downsample_mask`).

Optimisers: `torch.optim.LBFGS([x], lr=1, max_iter=20, history_size=100)` with one
`step(closure)` (the closure's 20 losses are the trajectory), and `torch.optim.Adam([x],
lr=0.02)` for 20 steps (the loss before each step).

Usage (from the repository root):

    /work/pyref/bin/python tools/ref/gatys_ref.py

Writes `crates/easel-fast/tests/fixtures/gatys_cases.safetensors` (the committed one comes from
an AMD EPYC; rerun on an AVX-512 Xeon with the same torch 2.15.0, every tensor but the L-BFGS
trajectory agrees within 2e-5, and that one parts after a dozen steps, where f32 rounding
differences grow):

* `photo` [1, 3, 40, 56] (chelsea_cat, bicubic), `style_a` [1, 3, 48, 48] (Starry Night),
  `style_b` [1, 3, 44, 44] (Hokusai's Great Wave), `x` [1, 3, 40, 56] (photo + uniform noise,
  seed 0), `regions` [2, 40, 56] (left half / right half);
* `plain.losses` [4] (content, style, tv, total) and `plain.grad` [1, 3, 40, 56] at `x` with
  style_a; `masked.losses`, `masked.grad` with style_a on the left, style_b on the right;
* `lbfgs.losses` [20], `adam.losses` [20]: trajectories from the photo with style_a.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from efficientnet_ref import FIXTURES, ROOT, load_lite0  # noqa: E402

STYLE = ["stem", "dw1", "dw3", "dw5", "dw8"]
CONTENT = ["block5"]
WEIGHTS = (1.0, 1e5, 10.0)
IMAGES = os.path.join(ROOT, "../shared/data/images")


def load(path, size):
    img = Image.open(path).convert("RGB").resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def gram(f, m=None):
    _, c, h, w = f.shape
    f = f.reshape(c, h * w)
    if m is None:
        return f @ f.t() / (c * h * w)
    fm = f * m
    return fm @ fm.t() / (c * float((m * m).sum()))


def downsample_mask(mask, h, w):
    """easel_fast::gatys::downsample_mask: box mean of the mask pixels each feature pixel covers."""
    mh, mw = mask.shape
    out = np.zeros((h, w), np.float64)
    for i in range(h):
        y0, y1 = i * mh // h, min(-(-(i + 1) * mh // h), mh)
        y1 = max(y1, y0 + 1)
        for j in range(w):
            x0, x1 = j * mw // w, min(-(-(j + 1) * mw // w), mw)
            x1 = max(x1, x0 + 1)
            out[i, j] = mask[y0:y1, x0:x1].astype(np.float64).mean()
    return torch.from_numpy(out.astype(np.float32)).reshape(1, h * w)


class Objective:
    def __init__(self, net, photo, styles, regions=None):
        self.net = net
        with torch.no_grad():
            self.content = [net.features(photo, "block5")[t] for t in CONTENT]
            out_sizes = [net.features(photo, "dw8")[t].shape[-2:] for t in STYLE]
            self.targets = []  # [layer][region] (gram, mask)
            for li, t in enumerate(STYLE):
                per = []
                for r, s in enumerate(styles):
                    g = gram(net.features(s, "dw8")[t])
                    m = None
                    if regions is not None:
                        h, w = out_sizes[li]
                        m = downsample_mask(regions[r].numpy(), h, w)
                    per.append((g, m))
                self.targets.append(per)

    def __call__(self, x):
        feats = self.net.features(x, "dw8")
        content = sum(((feats[t] - p) ** 2).mean() for t, p in zip(CONTENT, self.content))
        style = 0.0
        for t, per in zip(STYLE, self.targets):
            for g, m in per:
                style = style + ((gram(feats[t], m) - g) ** 2).mean()
        return with_tv(content, style, x)


def with_tv(content, style, x):
    """(content, style, tv, total) with the total variation of `x` and the WEIGHTS."""
    dy = x[:, :, 1:, :] - x[:, :, :-1, :]
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    tv = (dy ** 2).mean() + (dx ** 2).mean()
    cw, sw, tw = WEIGHTS
    return content, style, tv, cw * content + sw * style + tw * tv


def losses_and_grad(obj, x):
    x = x.clone().requires_grad_(True)
    c, s, t, total = obj(x)
    total.backward()
    return torch.tensor([c.item(), s.item(), t.item(), total.item()]), x.grad.detach()


def main():
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = load_lite0()
    for p in net.parameters():
        p.requires_grad_(False)
    photo = load(os.path.join(IMAGES, "content/chelsea_cat.png"), (56, 40))
    style_a = load(os.path.join(IMAGES, "style/vangogh_starry_night.jpg"), (48, 48))
    style_b = load(os.path.join(IMAGES, "style/hokusai_great_wave_large.jpg"), (44, 44))
    x = (photo + 0.1 * torch.rand_like(photo)).clamp(0, 1)
    regions = torch.zeros(2, 40, 56)
    regions[0, :, :28] = 1
    regions[1, :, 28:] = 1
    out = {"photo": photo, "style_a": style_a, "style_b": style_b, "x": x, "regions": regions}

    plain = Objective(net, photo, [style_a])
    out["plain.losses"], out["plain.grad"] = losses_and_grad(plain, x)
    masked = Objective(net, photo, [style_a, style_b], regions)
    out["masked.losses"], out["masked.grad"] = losses_and_grad(masked, x)

    img = photo.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([img], lr=1, max_iter=20, history_size=100)
    traj = []

    def closure():
        opt.zero_grad()
        total = plain(img)[3]
        total.backward()
        traj.append(float(total))
        return total

    opt.step(closure)
    out["lbfgs.losses"] = torch.tensor(traj)
    print("lbfgs", traj)

    img = photo.clone().requires_grad_(True)
    opt = torch.optim.Adam([img], lr=0.02)
    traj = []
    for _ in range(20):
        opt.zero_grad()
        total = plain(img)[3]
        total.backward()
        traj.append(float(total))
        opt.step()
    out["adam.losses"] = torch.tensor(traj)
    print("adam", traj)

    path = os.path.join(FIXTURES, "gatys_cases.safetensors")
    save_file({k: v.detach().contiguous().float() for k, v in out.items()}, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
