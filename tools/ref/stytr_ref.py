#!/usr/bin/env python3
"""Reference outputs of the StyTr² transformer stylizer for `crates/easel-fast/tests/stytr_parity.rs`.

StyTr² (Deng et al., "StyTr²: Image Style Transfer with Transformers", CVPR 2022,
https://arxiv.org/abs/2105.14576; code diyiiyiii/StyTR-2 `models/transformer.py`,
`models/StyTR.py`). The modules below are written for easel: same module tree as the repo (so the
same state-dict keys as its `transformer_iter_*.pth`, `embedding_iter_*.pth`,
`decoder_iter_*.pth`), same forward as the repo in eval mode, with the two fixes easel makes for
inputs that are not square or not the same size (see `Transformer.forward`), plus our pyramidal
positional encoding (`PyramidalPE`). Random weights (seed 0), a tiny configuration (`TINY`).
Nothing is downloaded.

Usage (from the repository root; torch CPU, numpy, pillow, safetensors in /work/venv):

    /work/venv/bin/python tools/ref/stytr_ref.py

Writes to `crates/easel-fast/tests/fixtures/`:

* `stytr_transformer_cape_tiny.pth`, `stytr_transformer_ppe_tiny.pth`: `torch.save` of the
  transformer state dict (encoder_c / encoder_s / decoder layers as the repo; `new_ps.*` for CAPE,
  `ppe.*` for the pyramidal encoding; the shared layers have the same weights in both);
  `stytr_embedding_tiny.pth` (`proj.weight`, `proj.bias`), `stytr_decoder_tiny.pth`
  (`nn.Sequential` indices `1.weight` … `28.bias`).
* `stytr_cases.safetensors`:
  - `image.content` uint8 [70, 100, 3]: `coffee_cup.png` resized (PIL LANCZOS) to 100x70;
    `image.style` uint8 [60, 84, 3]: `kandinsky_composition_vii.jpg` to 84x60. Network inputs are
    `float32(u8) / 255`, NCHW RGB. Both are reflection-padded at the bottom/right to multiples of
    8 (104x72 -> 13x9 tokens, 88x64 -> 11x8 tokens); the output is cropped back to 100x70.
  - `expected.cape` (grid 6), `expected.cape18` (the published grid 18, larger than the 13x9
    token map), `expected.ppe`: float32 [1, 3, 70, 100], the CNN decoder output (not clamped).
* `stytr_original_keys.json`: every key and shape of the full-size (published) state dicts, for
  the test that the public checkpoints' layout loads.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "images"
OUT = ROOT / "crates" / "easel-fast" / "tests" / "fixtures"

ORIGINAL = dict(d_model=512, nhead=8, layers=3, ff=2048, widths=(64, 128, 256, 512), cape_grid=18,
                ppe_windows=(8, 16, 32), ppe_branch=128)
TINY = dict(d_model=32, nhead=4, layers=3, ff=64, widths=(4, 8, 16, 32), cape_grid=6,
            ppe_windows=(2, 4, 8), ppe_branch=4)
PPE_KERNELS = (1, 3, 5)
PATCH = 8


class EncoderLayer(nn.Module):
    """Post-norm layer of the repo's `TransformerEncoderLayer` (dropout is identity in eval)."""

    def __init__(self, d, nhead, ff):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, src, pos):
        q = k = src if pos is None else src + pos
        src = self.norm1(src + self.self_attn(q, k, src, need_weights=False)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DecoderLayer(nn.Module):
    """The repo's `TransformerDecoderLayer.forward_post`. Its first block, named `self_attn`, takes
    its keys and values from the style memory (`k = memory + pos`, `v = memory`), not from the
    content: both attention blocks attend from content queries to the style."""

    def __init__(self, d, nhead, ff):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead)
        self.multihead_attn = nn.MultiheadAttention(d, nhead)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)

    def forward(self, tgt, memory, query_pos):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, memory, memory, need_weights=False)[0])
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.multihead_attn(q, memory, memory, need_weights=False)[0])
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Encoder(nn.Module):
    def __init__(self, layer, n):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(n)])

    def forward(self, x, pos):
        for layer in self.layers:
            x = layer(x, pos)
        return x


class Decoder(nn.Module):
    def __init__(self, layer, n, d):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(n)])
        self.norm = nn.LayerNorm(d)

    def forward(self, tgt, memory, query_pos):
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos)
        return self.norm(tgt)


class PyramidalPE(nn.Module):
    """easel's pyramidal positional encoding (after PyramidStyler's PPE, Durairaju & Saruladha,
    https://arxiv.org/abs/2510.01715). For each window size `w` (in tokens): adaptive average
    pooling of the content embedding to a (ceil(h/w), ceil(w_/w)) grid; at that grid, 1x1, 3x3 and
    5x5 convs (zero padding k//2) to `branch` channels each, ReLU, concatenated; bilinearly
    interpolated (align_corners=False) back to the token map; all scales concatenated and fused by
    a 1x1 conv to `d` channels."""

    def __init__(self, d, windows, branch):
        super().__init__()
        self.windows = tuple(windows)
        self.branches = nn.ModuleList(
            [nn.ModuleList([nn.Conv2d(d, branch, k, padding=k // 2) for k in PPE_KERNELS]) for _ in windows])
        self.fuse = nn.Conv2d(len(windows) * len(PPE_KERNELS) * branch, d, 1)

    def forward(self, content):
        h, w = content.shape[-2:]
        levels = []
        for win, convs in zip(self.windows, self.branches):
            pooled = F.adaptive_avg_pool2d(content, (math.ceil(h / win), math.ceil(w / win)))
            y = torch.cat([F.relu(conv(pooled)) for conv in convs], 1)
            levels.append(F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(levels, 1))


class Transformer(nn.Module):
    """The repo's `Transformer` (models/transformer.py) in eval mode, `normalize_before=False`."""

    def __init__(self, cfg, pe):
        super().__init__()
        d, nhead, n, ff = cfg["d_model"], cfg["nhead"], cfg["layers"], cfg["ff"]
        enc = EncoderLayer(d, nhead, ff)
        self.encoder_c = Encoder(enc, n)
        self.encoder_s = Encoder(enc, n)
        self.decoder = Decoder(DecoderLayer(d, nhead, ff), n, d)
        self.pe = pe
        if pe == "cape":
            self.new_ps = nn.Conv2d(d, d, (1, 1))
            self.cape_grid = cfg["cape_grid"]
        else:
            self.ppe = PyramidalPE(d, cfg["ppe_windows"], cfg["ppe_branch"])

    def forward(self, style, content):
        """style, content: patch embeddings [1, d, hs, ws] / [1, d, h, w] -> [1, d, h, w].

        Two departures from the repo, both identical to it where it runs at all:
        * CAPE is interpolated to the content's token map; the repo interpolates to
          `style.shape[-2:]`, which only works when both images have the same size (its test.py
          crops both to 512x512).
        * The result is reshaped with the true (h, w); the repo's `hs.view(B, C, -1, int(sqrt(N)))`
          assumes a square token map.
        The style encoder and the decoder keys get no positional encoding (`pos_embed_s` is None in
        the repo)."""
        _, d, h, w = content.shape
        if self.pe == "cape":
            pooled = F.adaptive_avg_pool2d(content, self.cape_grid)
            pos_c = F.interpolate(self.new_ps(pooled), mode="bilinear", size=(h, w))
        else:
            pos_c = self.ppe(content)
        tokens = lambda x: x.flatten(2).permute(2, 0, 1)  # NxCxHxW -> HWxNxC
        style = self.encoder_s(tokens(style), None)
        pos_c = tokens(pos_c)
        content = self.encoder_c(tokens(content), pos_c)
        hs = self.decoder(content, style, pos_c)
        return hs.permute(1, 2, 0).reshape(1, d, h, w)


class PatchEmbed(nn.Module):
    """The repo's `PatchEmbed` (its `up1` has no parameters and is unused)."""

    def __init__(self, d):
        super().__init__()
        self.proj = nn.Conv2d(3, d, kernel_size=PATCH, stride=PATCH)

    def forward(self, x):
        return self.proj(x)


def make_decoder(w) -> nn.Sequential:
    """The repo's `decoder` (models/StyTR.py; the AdaIN decoder), widths parameterised."""
    a, b, c, d = w

    def conv(i, o, relu=True):
        return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(i, o, (3, 3))] + ([nn.ReLU()] if relu else [])

    up = [nn.Upsample(scale_factor=2, mode="nearest")]
    layers = conv(d, c) + up + conv(c, c) + conv(c, c) + conv(c, c) + conv(c, b) + up
    layers += conv(b, b) + conv(b, a) + up + conv(a, a) + conv(a, 3, relu=False)
    assert len(layers) == 29
    return nn.Sequential(*layers)


def pad8(x):
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % PATCH, 0, (-h) % PATCH), mode="reflect")


def stylize(embedding, transformer, decoder, content, style):
    """easel `StyTr::stylize`: pad both to multiples of 8, embed, transform, decode, crop."""
    h, w = content.shape[-2:]
    hs = transformer(embedding(pad8(style)), embedding(pad8(content)))
    return decoder(hs)[..., :h, :w]


def init_(module: nn.Module, gen: torch.Generator, conv_gain: float = 1.0) -> None:
    """Xavier-uniform matrices (the repo's `_reset_parameters`), He-normal convs (times
    `conv_gain`), LayerNorm scales around 1 and small biases, so every parameter is exercised."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_((torch.rand(p.shape, generator=gen) - 0.3) * 0.2)
            elif ".norm" in f".{name}" and p.dim() == 1:
                p.copy_(1.0 + (torch.rand(p.shape, generator=gen) - 0.5) * 0.4)
            elif p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=gen) * conv_gain * (2.0 / fan_in) ** 0.5)
            else:
                bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)


def load_u8(name: str, size) -> np.ndarray:
    return np.asarray(Image.open(SHARED / name).convert("RGB").resize(size, Image.LANCZOS), dtype=np.uint8)


def to_t(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def write_original_keys() -> None:
    """Keys and shapes of the published checkpoints (from full-size modules; no weights kept)."""
    with torch.device("meta"):
        parts = {
            "transformer": Transformer(ORIGINAL, "cape"),
            "embedding": PatchEmbed(ORIGINAL["d_model"]),
            "decoder": make_decoder(ORIGINAL["widths"]),
        }
    keys = {name: {k: list(v.shape) for k, v in m.state_dict().items()} for name, m in parts.items()}
    (OUT / "stytr_original_keys.json").write_text(json.dumps(keys, indent=1) + "\n")


def main() -> None:
    torch.manual_seed(0)
    cfg = TINY
    gen = torch.Generator().manual_seed(0)
    cape = Transformer(cfg, "cape")
    init_(cape, gen)
    ppe = Transformer(cfg, "ppe")
    shared = {k: v for k, v in cape.state_dict().items() if not k.startswith("new_ps.")}
    missing, _ = ppe.load_state_dict(shared, strict=False)
    assert all(k.startswith("ppe.") for k in missing), missing
    init_(ppe.ppe, gen)
    embedding = PatchEmbed(cfg["d_model"])
    init_(embedding, gen)
    decoder = make_decoder(cfg["widths"])
    init_(decoder, gen, conv_gain=1.4)  # 4..32 channels: keep the ReLUs alive
    for m in (cape, ppe, embedding, decoder):
        m.eval()

    content_u8 = load_u8("content/coffee_cup.png", (100, 70))
    style_u8 = load_u8("style/kandinsky_composition_vii.jpg", (84, 60))
    content, style = to_t(content_u8), to_t(style_u8)
    tensors = {"image.content": content_u8, "image.style": style_u8}
    with torch.no_grad():
        cases = {"cape": stylize(embedding, cape, decoder, content, style)}
        cape.cape_grid = 18
        cases["cape18"] = stylize(embedding, cape, decoder, content, style)
        cape.cape_grid = cfg["cape_grid"]
        cases["ppe"] = stylize(embedding, ppe, decoder, content, style)
    for name, y in cases.items():
        assert y.shape == (1, 3, 70, 100), y.shape
        print(f"{name}: std {y.std():.3f} range [{y.min():.3f}, {y.max():.3f}]")
        tensors[f"expected.{name}"] = y.numpy().copy()
    print("cape vs ppe max diff", float((cases["cape"] - cases["ppe"]).abs().max()))

    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(cape.state_dict(), OUT / "stytr_transformer_cape_tiny.pth")
    torch.save(ppe.state_dict(), OUT / "stytr_transformer_ppe_tiny.pth")
    torch.save(embedding.state_dict(), OUT / "stytr_embedding_tiny.pth")
    torch.save(decoder.state_dict(), OUT / "stytr_decoder_tiny.pth")
    save_file(tensors, str(OUT / "stytr_cases.safetensors"))
    write_original_keys()
    for p in sorted(OUT.glob("stytr*")):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
