#!/usr/bin/env python3
"""Reference losses and gradients of the fast stylizers' training for
`crates/easel-fast/tests/fast_losses.rs`.

The networks are the tiny random `vgg` and `decoder` of `tools/ref/adain_ref.py` (the committed
`adain_vgg_tiny.pth` / `adain_decoder_tiny.pth`, widths 8, 16, 32, 64), loaded with
`torch.load(weights_only=True)`. The losses are written out below from the public repos:

* AdaIN (naoto0804/pytorch-AdaIN `net.py` `Net.forward`, `train.py`): content = MSE(relu4_1 of
  the output, t) with t = adain(relu4_1(content), relu4_1(style)) detached; style = sum over
  relu1_1..relu4_1 of MSE(mean) + MSE(std) (`calc_mean_std`, unbiased variance + 1e-5); the
  total 1 * content + 10 * style is back-propagated into the decoder.
* StyTr² (diyiiyiii/StyTR-2 `models/StyTR.py` `StyTrans.forward`, `function.py` `normal`,
  `train.py`): content = MSE(normal(relu4_1)) + MSE(normal(relu5_1)); style = the AdaIN style
  loss over relu1_1..relu5_1; identity 1 = pixel MSE; identity 2 = feature MSE summed over the
  five layers. Here they are evaluated on a picture `x` (which receives the gradient) against
  fixed pictures, as the network's outputs would be: content(x, c), style(x, s), id1 = MSE(x, c),
  id2 = features(x) vs features(c); total 7 content + 10 style + 70 id1 + 1 id2. That checks every
  loss and the VGG's backward (pads, max pools, ReLUs) without the transformer network.

Usage (from the repository root, /work/venv has torch CPU, safetensors):

    /work/venv/bin/python tools/ref/fast_losses_ref.py

Writes `crates/easel-fast/tests/fixtures/fast_losses_cases.safetensors`:

* `adain.content`, `adain.style` f32 [2, 3, 32, 40]: uniform random pictures (seed 0);
  `adain.loss_content`, `adain.loss_style` f32 [1]; `adain.grad.<key>`: gradient of the total
  for every decoder parameter (state-dict keys of `adain_decoder_tiny.pth`).
* `stytr.x`, `stytr.content`, `stytr.style` f32 [2, 3, 48, 40] (non-square; relu5_1 is 3x3);
  `stytr.loss_content`, `stytr.loss_style`, `stytr.loss_id1`, `stytr.loss_id2` f32 [1];
  `stytr.grad_x` f32 [2, 3, 48, 40]: gradient of the total w.r.t. `x`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "crates" / "easel-fast" / "tests" / "fixtures"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adain_ref import (RELU_INDEX, adaptive_instance_normalization,  # noqa: E402
                       calc_mean_std, make_decoder, make_vgg)

LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def features(vgg: nn.Sequential, x: torch.Tensor, last: str) -> list[torch.Tensor]:
    out = []
    for i, m in enumerate(vgg[: RELU_INDEX[last] + 1]):
        x = m(x)
        if i in RELU_INDEX.values():
            out.append(x)
    return out


def mse(a, b):
    return nn.MSELoss()(a, b.detach())


def mean_std_loss(a, b):
    am, as_ = calc_mean_std(a)
    bm, bs = calc_mean_std(b)
    return mse(am, bm) + mse(as_, bs)


def normal(feat):
    m, s = calc_mean_std(feat)
    return (feat - m) / s


def main() -> None:
    vgg, decoder = make_vgg(), make_decoder()
    vgg.load_state_dict(torch.load(FIXTURES / "adain_vgg_tiny.pth", weights_only=True))
    decoder.load_state_dict(torch.load(FIXTURES / "adain_decoder_tiny.pth", weights_only=True))
    for p in vgg.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    out = {}

    # AdaIN: Net.forward of pytorch-AdaIN.
    content = torch.rand(2, 3, 32, 40, generator=gen)
    style = torch.rand(2, 3, 32, 40, generator=gen)
    style_feats = features(vgg, style, "relu4_1")
    t = adaptive_instance_normalization(features(vgg, content, "relu4_1")[-1], style_feats[-1])
    g = decoder(t.detach())
    g_feats = features(vgg, g, "relu4_1")
    loss_c = mse(g_feats[-1], t)
    loss_s = sum(mean_std_loss(a, b) for a, b in zip(g_feats, style_feats))
    (1.0 * loss_c + 10.0 * loss_s).backward()
    out["adain.content"], out["adain.style"] = content, style
    out["adain.loss_content"], out["adain.loss_style"] = loss_c.reshape(1), loss_s.reshape(1)
    for k, p in decoder.named_parameters():
        out[f"adain.grad.{k}"] = p.grad
    print(f"adain: content {loss_c.item():.6f} style {loss_s.item():.6f}")

    # StyTr² losses on a picture x.
    x = torch.rand(2, 3, 48, 40, generator=gen).requires_grad_(True)
    c = torch.rand(2, 3, 48, 40, generator=gen)
    s = torch.rand(2, 3, 48, 40, generator=gen)
    xf, cf, sf = (features(vgg, v, "relu5_1") for v in (x, c, s))
    loss_c = mse(normal(xf[-1]), normal(cf[-1])) + mse(normal(xf[-2]), normal(cf[-2]))
    loss_s = sum(mean_std_loss(a, b) for a, b in zip(xf, sf))
    id1 = mse(x, c)
    id2 = sum(mse(a, b) for a, b in zip(xf, cf))
    (7.0 * loss_c + 10.0 * loss_s + 70.0 * id1 + 1.0 * id2).backward()
    out["stytr.x"], out["stytr.content"], out["stytr.style"] = x, c, s
    for name, v in (("content", loss_c), ("style", loss_s), ("id1", id1), ("id2", id2)):
        out[f"stytr.loss_{name}"] = v.reshape(1)
    out["stytr.grad_x"] = x.grad
    print(f"stytr: content {loss_c.item():.6f} style {loss_s.item():.6f} id1 {id1.item():.6f} "
          f"id2 {id2.item():.6f} |grad| max {x.grad.abs().max().item():.3e}")

    path = FIXTURES / "fast_losses_cases.safetensors"
    save_file({k: v.detach().contiguous() for k, v in out.items()}, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
