#!/usr/bin/env python3
"""Reference outputs of AdaIN (Huang & Belongie 2017) for `crates/easel-fast/tests/adain_parity.rs`
and checkpoints for `crates/easel-fast/tests/torch_import.rs`.

The networks are the `vgg` ("vgg_normalised") and `decoder` `nn.Sequential`s of
naoto0804/pytorch-AdaIN `net.py`, written out below (same module order, so the same state-dict
keys as the public `vgg_normalised.pth` / `decoder.pth`), with every channel count divided by 8
(`WIDTHS`) and random weights (seed 0). `adaptive_instance_normalization` / `calc_mean_std` are
the repo's `function.py` (unbiased variance + eps, then sqrt); style interpolation is the repo's
`style_transfer(..., interpolation_weights)`; spatial control (not in the PyTorch repo) follows the
authors' Lua `test.lua -mask`, see `spatial_control` below. Nothing is downloaded.

Usage (from the repository root; torch CPU, numpy, pillow, safetensors in /work/venv):

    /work/venv/bin/python tools/ref/adain_ref.py

Writes to `crates/easel-fast/tests/fixtures/`:

* `adain_vgg_tiny.pth`, `adain_decoder_tiny.pth`: `torch.save(state_dict)` (zip format) of the
  reduced-width networks; all 53 vgg modules (conv5_2..conv5_4 included, as in the public file).
* `adain_decoder_tiny_legacy.pth`: the same decoder saved in the pre-1.6 (non-zip) format.
* `adain_import_views.pth` / `adain_import_views_legacy.pth`: tensors of several dtypes, a
  transposed view, views sharing one storage at an offset, an `nn.Parameter`; their expected
  contiguous values are `views.<name>` (float64) in the safetensors file, dtype in metadata.
* `adain_malicious_*.pth`: hand-assembled pickles that reference `os.system` (GLOBAL + REDUCE),
  `builtins.eval` (protocol 4 STACK_GLOBAL) and `posix.system` through INST; built from raw
  bytes, never unpickled (only disassembled, and checked to be refused by
  `torch.load(weights_only=True)`, which executes nothing).
* `adain_corrupt_pkl.pth`: a zip checkpoint whose data.pkl is cut before STOP.
* `adain_cases.safetensors`:
  - `image.content` uint8 [70, 100, 3]: `coffee_cup.png` resized by PIL (LANCZOS) to 100x70;
    `image.style` uint8 [72, 80, 3]: `kandinsky_composition_vii.jpg` to 80x72;
    `image.style2` uint8 [88, 72, 3]: `hokusai_great_wave_large.jpg` to 72x88;
    `image.mask` uint8 [70, 100]: 255 inside a disc (centre (38, 30), radius 23), else 0.
    Network inputs are `float32(u8) / 255`, NCHW RGB.
  - `features.relu{1..5}_1`: the vgg of `image.content` (unpadded, so the ceil-mode pools see odd
    sizes 70 -> 35 -> 18 -> 9 -> 5).
  - `expected.<case>` float32 [1, 3, 70, 100], the decoder output (not clamped), for the cases
    `alpha1`, `alpha0.6`, `interp` (style 0.7 / style2 0.3), `mask` (style inside the disc,
    style2 outside, alpha 0.8).

Size handling (easel `AdaIN::stylize`): the content is reflection-padded at the bottom/right to
a multiple of 8 (70x100 -> 72x104), encoded to relu4_1, decoded, and cropped back; style images
are encoded as they are (no padding, so their statistics only see real pixels).
"""
from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
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

# Channel counts of the original networks are (64, 128, 256, 512); the fixtures use 1/8.
WIDTHS = (8, 16, 32, 64)
EPS = 1e-5


def make_vgg(w=WIDTHS) -> nn.Sequential:
    """naoto0804/pytorch-AdaIN net.py `vgg`, widths parameterised."""
    a, b, c, d = w

    def conv(i, o):
        return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(i, o, (3, 3)), nn.ReLU()]

    def pool():
        return [nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)]

    layers = [nn.Conv2d(3, 3, (1, 1))]
    layers += conv(3, a) + conv(a, a) + pool()  # relu1_1 (3), relu1_2
    layers += conv(a, b) + conv(b, b) + pool()  # relu2_1 (10)
    layers += conv(b, c) + conv(c, c) + conv(c, c) + conv(c, c) + pool()  # relu3_1 (17)
    layers += conv(c, d) + conv(d, d) + conv(d, d) + conv(d, d) + pool()  # relu4_1 (30)
    layers += conv(d, d) + conv(d, d) + conv(d, d) + conv(d, d)  # relu5_1 (43) .. relu5_4
    assert len(layers) == 53
    return nn.Sequential(*layers)


def make_decoder(w=WIDTHS) -> nn.Sequential:
    """naoto0804/pytorch-AdaIN net.py `decoder`, widths parameterised."""
    a, b, c, d = w

    def conv(i, o, relu=True):
        return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(i, o, (3, 3))] + ([nn.ReLU()] if relu else [])

    up = [nn.Upsample(scale_factor=2, mode="nearest")]
    layers = conv(d, c) + up + conv(c, c) + conv(c, c) + conv(c, c) + conv(c, b) + up
    layers += conv(b, b) + conv(b, a) + up + conv(a, a) + conv(a, 3, relu=False)
    assert len(layers) == 29
    return nn.Sequential(*layers)


RELU_INDEX = {"relu1_1": 3, "relu2_1": 10, "relu3_1": 17, "relu4_1": 30, "relu5_1": 43}


def init_(net: nn.Sequential, gen: torch.Generator) -> None:
    """He-normal weights (gain 1.2 for the first convs so post-pool activations stay O(1)),
    small uniform biases."""
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=gen) - 0.5) * 0.1)


def calc_mean_std(feat, eps=EPS):
    """pytorch-AdaIN function.py."""
    size = feat.size()
    assert len(size) == 4
    n, c = size[:2]
    feat_var = feat.view(n, c, -1).var(dim=2) + eps
    feat_std = feat_var.sqrt().view(n, c, 1, 1)
    feat_mean = feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1)
    return feat_mean, feat_std


def adaptive_instance_normalization(content_feat, style_feat):
    """pytorch-AdaIN function.py."""
    assert content_feat.size()[:2] == style_feat.size()[:2]
    size = content_feat.size()
    style_mean, style_std = calc_mean_std(style_feat)
    content_mean, content_std = calc_mean_std(content_feat)
    normalized_feat = (content_feat - content_mean.expand(size)) / content_std.expand(size)
    return normalized_feat * style_std.expand(size) + style_mean.expand(size)


def pad8(x):
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    return F.pad(x, (0, pw, 0, ph), mode="reflect")


def spatial_control(cf, sf1, sf2, mask_hw):
    """Lua AdaIN-style test.lua `-mask`: the mask is brought to feature resolution and made binary
    (easel: 8x8 block mean of the padded mask >= 0.5; Lua: nearest 'simple' scaling of a binary
    mask); the content statistics are taken over the foreground (background) feature pixels only,
    each style's over its whole image; foreground pixels get adain(c_fg, s1), background pixels
    adain(c_bg, s2). Statistics are `calc_mean_std`'s (unbiased variance + eps); a region of a
    single pixel has variance 0, an empty region is simply absent."""
    m = F.avg_pool2d(pad8(mask_hw[None, None]), 8)[0, 0] >= 0.5
    assert m.shape == cf.shape[-2:], (m.shape, cf.shape)
    out = torch.zeros_like(cf)
    for region, sf in ((m, sf1), (~m, sf2)):
        x = cf[0][:, region]  # C x n
        n = x.shape[1]
        if n == 0:
            continue
        mean = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True) if n > 1 else torch.zeros_like(mean)
        std = (var + EPS).sqrt()
        s_mean, s_std = calc_mean_std(sf)
        y = (x - mean) / std * s_std[0, :, :, 0] + s_mean[0, :, :, 0]
        out[0][:, region] = y
    return out, m


def stylize(vgg, decoder, content, styles, alpha, mask=None):
    enc = vgg[:31]
    h, w = content.shape[-2:]
    cf = enc(pad8(content))
    sfs = [enc(s) for s, _ in styles]
    if mask is not None:
        feat, _ = spatial_control(cf, sfs[0], sfs[1], mask)
    else:
        total = sum(wt for _, wt in styles)
        feat = torch.zeros_like(cf)
        for sf, (_, wt) in zip(sfs, styles):
            feat = feat + (wt / total) * adaptive_instance_normalization(cf, sf)
    feat = feat * alpha + cf * (1 - alpha)
    return decoder(feat)[..., :h, :w]


def load_u8(name: str, size) -> np.ndarray:
    return np.asarray(Image.open(SHARED / name).convert("RGB").resize(size, Image.LANCZOS), dtype=np.uint8)


def to_t(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def zip_checkpoint(path: Path, pkl: bytes, storages=None) -> None:
    """A zip laid out as torch.save does (`<stem>/data.pkl`, `<stem>/data/<key>`, version files),
    with fixed timestamps so the bytes are reproducible."""
    stem = path.stem
    entries = [(f"{stem}/data.pkl", pkl), (f"{stem}/byteorder", b"little")]
    entries += [(f"{stem}/data/{key}", data) for key, data in (storages or {}).items()]
    entries.append((f"{stem}/version", b"3\n"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def binunicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def write_malicious() -> None:
    # GLOBAL os.system, REDUCE with ("echo pwned",): the classic pickle payload.
    p1 = b"\x80\x02cos\nsystem\nq\x00" + binunicode("echo pwned") + b"\x85q\x01Rq\x02."
    # Protocol 4: STACK_GLOBAL builtins.eval, then REDUCE.
    p2 = (b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94"
          + b"\x8c\x0bprint('hi')\x94\x85\x94R\x94.")
    # INST (not an opcode torch.save emits): looks up posix.system and calls it with the MARK args.
    p3 = b"\x80\x02(" + binunicode("echo pwned") + b"iposix\nsystem\n."
    # A state dict whose tensor rebuild is fine but whose dict value is a call of os.system.
    p4 = (b"\x80\x02}q\x00(" + binunicode("0.weight") + b"cos\nsystem\n" + binunicode("echo pwned")
          + b"\x85Ru.")
    for name, pkl in (("global", p1), ("stack_global", p2), ("inst", p3), ("in_dict", p4)):
        pickletools.dis(pkl, out=io.StringIO())  # well-formed (disassembly executes nothing)
        path = OUT / f"adain_malicious_{name}.pth"
        zip_checkpoint(path, pkl)
        try:
            torch.load(path, weights_only=True)
            raise SystemExit(f"{path.name}: torch's weights-only unpickler accepted it")
        except pickle.UnpicklingError:
            pass
    # Cut before STOP (inside the GLOBAL name of `_rebuild_tensor_v2`): a valid zip, truncated pickle.
    good = io.BytesIO()
    torch.save({"w": torch.ones(2)}, good)
    with zipfile.ZipFile(good) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    zip_checkpoint(OUT / "adain_corrupt_pkl.pth", pkl[:40], {"0": np.ones(2, np.float32).tobytes()})


def write_views(tensors: dict) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) * 0.5 - 3.0
    sd = {
        "f32": torch.linspace(-1, 1, 7),
        "transposed": base.t(),  # strides (1, 6)
        "slice": base[1:3, 2:5],  # offset 8, strides (6, 1), storage shared with "transposed"
        "f16": torch.tensor([[0.5, -2.0], [65504.0, 1e-3]], dtype=torch.float16),
        "bf16": torch.tensor([1.5, -0.15625, 3.0e10], dtype=torch.bfloat16),
        "f64": torch.tensor([1e-300, -2.5], dtype=torch.float64),
        "i64": torch.tensor([[-(2**40), 7, 0]], dtype=torch.int64),
        "i32": torch.tensor([-5, 2**31 - 1], dtype=torch.int32),
        "u8": torch.tensor([0, 255, 3], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(4.25),
        "empty": torch.zeros(0, 3),
        "param": nn.Parameter(torch.arange(3, dtype=torch.float32)),
    }
    torch.save(sd, OUT / "adain_import_views.pth")
    torch.save(sd, OUT / "adain_import_views_legacy.pth", _use_new_zipfile_serialization=False)
    meta = {}
    for k, v in sd.items():
        tensors[f"views.{k}"] = np.ascontiguousarray(v.detach().to(torch.float64).numpy())
        meta[f"dtype.{k}"] = str(v.dtype).removeprefix("torch.")
    return meta


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    vgg, decoder = make_vgg(), make_decoder()
    init_(vgg, gen)
    init_(decoder, gen)
    vgg.eval()
    decoder.eval()

    content_u8 = load_u8("content/coffee_cup.png", (100, 70))
    style_u8 = load_u8("style/kandinsky_composition_vii.jpg", (80, 72))
    style2_u8 = load_u8("style/hokusai_great_wave_large.jpg", (72, 88))
    yy, xx = np.mgrid[0:70, 0:100]
    mask_u8 = np.where((xx - 38) ** 2 + (yy - 30) ** 2 <= 23**2, 255, 0).astype(np.uint8)
    content, style, style2 = to_t(content_u8), to_t(style_u8), to_t(style2_u8)
    mask = torch.from_numpy(mask_u8.astype(np.float32) / 255.0)

    tensors = {
        "image.content": content_u8,
        "image.style": style_u8,
        "image.style2": style2_u8,
        "image.mask": mask_u8,
    }
    with torch.no_grad():
        x = content
        for i, m in enumerate(vgg[:44]):
            x = m(x)
            for name, idx in RELU_INDEX.items():
                if idx == i:
                    tensors[f"features.{name}"] = x.numpy().copy()
                    print(f"{name}: {tuple(x.shape)} std {x.std():.3f} max {x.max():.3f}")
        cases = {
            "alpha1": stylize(vgg, decoder, content, [(style, 1.0)], 1.0),
            "alpha0.6": stylize(vgg, decoder, content, [(style, 1.0)], 0.6),
            "interp": stylize(vgg, decoder, content, [(style, 0.7), (style2, 0.3)], 1.0),
            "mask": stylize(vgg, decoder, content, [(style, 1.0), (style2, 1.0)], 0.8, mask),
        }
        _, m = spatial_control(vgg[:31](pad8(content)), vgg[:31](style), vgg[:31](style2), mask)
        print(f"mask at feature resolution: {int(m.sum())} of {m.numel()} pixels foreground")
    for name, y in cases.items():
        assert y.shape == (1, 3, 70, 100), y.shape
        print(f"{name}: std {y.std():.3f} range [{y.min():.3f}, {y.max():.3f}]")
        tensors[f"expected.{name}"] = y.numpy().copy()

    torch.save(vgg.state_dict(), OUT / "adain_vgg_tiny.pth")
    torch.save(decoder.state_dict(), OUT / "adain_decoder_tiny.pth")
    torch.save(decoder.state_dict(), OUT / "adain_decoder_tiny_legacy.pth",
               _use_new_zipfile_serialization=False)
    meta = write_views(tensors)
    write_malicious()
    save_file(tensors, str(OUT / "adain_cases.safetensors"), metadata=meta)
    for p in sorted(OUT.glob("adain*")):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
