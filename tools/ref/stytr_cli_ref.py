#!/usr/bin/env python3
"""A tiny StyTr² CNN decoder whose output spans the 8-bit range, for the CLI tests
(`crates/easel-cli/tests/cli_stytr.rs`).

The random decoder of `stytr_ref.py` is almost dead on photos (its last ReLU is about 0.02 %
alive): saved as an 8-bit PNG, its output is a flat colour whatever the transformer does, so PNGs
cannot tell settings apart. This decoder has He-normal convs (std sqrt(2 / fan_in)) and zero biases,
so about 70 % of its ReLUs are alive; its last conv is then scaled, and its bias set, so that on
the CLI tests' inputs (`examples/chelsea_cat.png` at 100x67 in the style of
`examples/kandinsky_composition_vii.jpg`, with the tiny CAPE transformer and embedding of
`stytr_ref.py`) each channel has mean 0.5 and spatial std 0.15. The CLI tests compare the
binary's PNGs with what the library paints with the same files; the PyTorch parity of the network
is `stytr_parity.rs` / `stytr_import.rs`.

Usage (from the repository root, after `stytr_ref.py`; torch CPU, pillow in /work/venv):

    /work/venv/bin/python tools/ref/stytr_cli_ref.py

Writes `crates/easel-fast/tests/fixtures/stytr_decoder_tiny_cli.pth` (`torch.save` of the state
dict, keys `1.weight` ... `28.bias` as `decoder_iter_*.pth`).
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import stytr_ref as ref

ROOT = Path(__file__).resolve().parents[2]
TARGET_MEAN, TARGET_STD = 0.5, 0.15


def image(path: Path, size) -> torch.Tensor:
    return ref.to_t(np.asarray(Image.open(path).convert("RGB").resize(size, Image.LANCZOS), dtype=np.uint8))


def main() -> None:
    cfg = ref.TINY
    transformer = ref.Transformer(cfg, "cape")
    transformer.load_state_dict(torch.load(ref.OUT / "stytr_transformer_cape_tiny.pth", weights_only=True))
    embedding = ref.PatchEmbed(cfg["d_model"])
    embedding.load_state_dict(torch.load(ref.OUT / "stytr_embedding_tiny.pth", weights_only=True))
    decoder = ref.make_decoder(cfg["widths"])
    gen = torch.Generator().manual_seed(1)
    convs = [m for m in decoder if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            conv.bias.zero_()
        for m in (transformer, embedding, decoder):
            m.eval()
        content = image(ROOT / "examples" / "chelsea_cat.png", (100, 67))
        style = image(ROOT / "examples" / "kandinsky_composition_vii.jpg", (100, 67))
        y = ref.stylize(embedding, transformer, decoder, content, style)[0].flatten(1)
        scale = TARGET_STD / y.std(1).mean()
        last = convs[-1]
        last.weight.mul_(scale)
        last.bias.copy_(TARGET_MEAN - scale * y.mean(1))
        y = ref.stylize(embedding, transformer, decoder, content, style)[0].flatten(1)
    print(f"calibrated: mean {y.mean(1).tolist()}, std {y.std(1).tolist()}")
    path = ref.OUT / "stytr_decoder_tiny_cli.pth"
    torch.save(decoder.state_dict(), path)
    print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
