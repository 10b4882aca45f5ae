#!/usr/bin/env python3
"""Reference values of easel-metrics for `crates/easel-metrics/tests/parity.rs`.

Usage (from the repository root; the venv has the packages of tools/ref/requirements.txt):

    /work/pyref/bin/python tools/ref/metrics_ref.py

Made with numpy 2.4.6, scipy 1.17.1, scikit-image 0.26.0, opencv-python-headless 5.0.0.93,
pillow 13.0.0 (the script records the versions it ran with in the JSON).

Inputs: real photos from `/work/shared/data/images/content/` and paintings from
`/work/shared/data/images/style/`, shrunk with PIL (LANCZOS), cropped and distorted (blur,
recolouring, noise) as listed in `make_pairs`.

Writes to `crates/easel-metrics/tests/fixtures/`:

* `metrics_<pair>_a.png`, `metrics_<pair>_b.png`: the exact uint8 RGB images measured;
* `metrics_ref.json`: per pair, what the references give for (a, b):
  - `ssim`: `skimage.metrics.structural_similarity(rgb2gray(a), rgb2gray(b),
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`
    (null when the sizes differ);
  - `edge_precision`, `edge_recall`, `edge_f1`: `cv2.Canny(rgb, 100, 200)` maps, 3×3 dilation
    (`cv2.dilate`, ones), a = photo, b = output (null when the sizes differ);
  - `histogan`: a NumPy (f64) reimplementation of StyleID's `evaluation/eval_histogan.py`
    (RGB-uv histogram, 64 bins, inverse-quadratic kernel σ 0.02, intensity scale, images over
    256 px resized to 256×256 with PyTorch's bilinear `align_corners=False` formula written out
    below; Hellinger distance). PyTorch is not used: the reference computes in f32, this and
    easel in f64;
  - `lab_a`, `lab_b`: mean and population std of `skimage.color.rgb2lab` per channel;
  - and `sets`: random features `a` (40×16) and `b` (32×16, shifted and scaled), with
    `kid` (unbiased MMD², kernel (x·y/d + 1)³, all rows: one subset) and `fid`
    (pytorch-fid's formula with `scipy.linalg.sqrtm` of `Σ1 Σ2`, `numpy.cov`).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import PIL
import scipy
import scipy.linalg
import skimage
from PIL import Image, ImageFilter
from skimage.color import rgb2gray, rgb2lab
from skimage.metrics import structural_similarity

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "easel-metrics" / "tests" / "fixtures"
DATA = Path("/work/shared/data/images")
EPS = 1e-6


def load(rel: str, long_side: int) -> Image.Image:
    img = Image.open(DATA / rel).convert("RGB")
    w, h = img.size
    s = long_side / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def make_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    pairs = []
    cat = load("content/chelsea_cat.png", 96)
    pairs.append(("cat_blur", cat, cat.filter(ImageFilter.GaussianBlur(1.5))))
    astro = np.asarray(load("content/astronaut_eileen_collins.png", 96)).astype(np.float64)
    recol = np.clip(255 * (astro[..., [1, 2, 0]] / 255) ** 0.7, 0, 255).round()
    pairs.append(("astronaut_recolour", astro.astype(np.uint8), recol.astype(np.uint8)))
    coffee = np.asarray(load("content/coffee_cup.png", 96)).astype(np.float64)
    noisy = np.clip(coffee + rng.normal(0, 20, coffee.shape), 0, 255).round()
    pairs.append(("coffee_noise", coffee.astype(np.uint8), noisy.astype(np.uint8)))
    hopper = load("content/grace_hopper_small_128.jpg", 80)
    scream = Image.open(DATA / "style/munch_the_scream.jpg").convert("RGB")
    pairs.append(("hopper_scream", hopper, scream.resize(hopper.size, Image.LANCZOS)))
    moraine = load("content/moraine_lake.jpg", 96)
    wave = Image.open(DATA / "style/hokusai_great_wave_large.jpg").convert("RGB")
    pairs.append(("moraine_wave", moraine, wave.resize(moraine.size, Image.LANCZOS)))
    # Over 256 px wide: the HistoGAN resize to 256×256 (down in x, up in y).
    rocket = load("content/rocket_launch_night.jpg", 272)
    rocket = rocket.crop((0, rocket.height // 2 - 20, 272, rocket.height // 2 + 20))
    night = load("style/vangogh_starry_night.jpg", 272)
    night = night.crop((0, night.height // 2 - 20, 272, night.height // 2 + 20))
    pairs.append(("rocket_night_strip", rocket, night))
    # Different sizes: only the colour metrics apply.
    pairs.append(
        ("mulberry_gauguin", load("content/nyc_mulberry_street_c1900.jpg", 64),
         load("style/gauguin_te_fare.jpg", 72))
    )
    return [(n, np.asarray(a, dtype=np.uint8), np.asarray(b, dtype=np.uint8)) for n, a, b in pairs]


def ssim_ref(a, b):
    return float(structural_similarity(rgb2gray(a), rgb2gray(b), gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False, data_range=1))


def edges_ref(photo, output):
    ep = cv2.Canny(photo, 100, 200) > 0
    eo = cv2.Canny(output, 100, 200) > 0
    kernel = np.ones((3, 3), np.uint8)
    dp = cv2.dilate(ep.astype(np.uint8), kernel) > 0
    do = cv2.dilate(eo.astype(np.uint8), kernel) > 0
    n_p, n_o = int(ep.sum()), int(eo.sum())
    if n_p == 0 and n_o == 0:
        return 1.0, 1.0, 1.0
    if n_p == 0 or n_o == 0:
        return 0.0, 0.0, 0.0
    precision = int((eo & dp).sum()) / n_o
    recall = int((ep & do).sum()) / n_p
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def torch_bilinear(x, out_h, out_w):
    """F.interpolate(x, (out_h, out_w), mode='bilinear', align_corners=False) of HWC x."""
    def axis(n_in, n_out):
        scale = n_in / n_out
        src = np.maximum(scale * (np.arange(n_out) + 0.5) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        l1 = src - i0
        return i0, i1, 1.0 - l1, l1
    y0, y1, wy0, wy1 = axis(x.shape[0], out_h)
    x0, x1, wx0, wx1 = axis(x.shape[1], out_w)
    top = x[y0][:, x0] * wx0[None, :, None] + x[y0][:, x1] * wx1[None, :, None]
    bot = x[y1][:, x0] * wx0[None, :, None] + x[y1][:, x1] * wx1[None, :, None]
    return wy0[:, None, None] * top + wy1[:, None, None] * bot


def rgb_uv_hist(img, h=64, insz=256, sigma=0.02):
    """RGBuvHistBlock.forward of eval_histogan.py, in NumPy f64 (one image, HWC uint8)."""
    x = img.astype(np.float64) / 255.0
    if x.shape[0] > insz or x.shape[1] > insz:
        x = torch_bilinear(x, insz, insz)
    I = x.reshape(-1, 3)
    Iy = np.sqrt((I ** 2).sum(axis=1) + EPS)[:, None]
    logs = np.log(I + EPS)
    bins = np.linspace(-3, 3, num=h)[None, :]
    hists = np.zeros((3, h, h))
    for c, (c1, c2) in enumerate([(1, 2), (0, 2), (0, 1)]):
        du = np.abs((logs[:, c] - logs[:, c1])[:, None] - bins) ** 2 / sigma ** 2
        dv = np.abs((logs[:, c] - logs[:, c2])[:, None] - bins) ** 2 / sigma ** 2
        hists[c] = (Iy * (1 / (1 + du))).T @ (1 / (1 + dv))
    return hists / (hists.sum() + EPS)


def histogan_ref(a, b):
    ha, hb = rgb_uv_hist(a), rgb_uv_hist(b)
    return float(1 / np.sqrt(2.0) * np.sqrt(np.sum((np.sqrt(hb) - np.sqrt(ha)) ** 2)))


def lab_ref(img):
    lab = rgb2lab(img).reshape(-1, 3)
    return {"mean": lab.mean(axis=0).tolist(), "std": lab.std(axis=0).tolist()}


def kid_ref(a, b):
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1))
                 + (kbb.sum() - np.trace(kbb)) / (n * (n - 1)) - 2 * kab.sum() / (m * n))


def fid_ref(a, b):
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, a, b in make_pairs():
        Image.fromarray(a).save(OUT / f"metrics_{name}_a.png", optimize=True)
        Image.fromarray(b).save(OUT / f"metrics_{name}_b.png", optimize=True)
        same = a.shape == b.shape
        p, r, f1 = edges_ref(a, b) if same else (None, None, None)
        cases.append({
            "name": name,
            "ssim": ssim_ref(a, b) if same else None,
            "edge_precision": p, "edge_recall": r, "edge_f1": f1,
            "histogan": histogan_ref(a, b),
            "lab_a": lab_ref(a), "lab_b": lab_ref(b),
        })
        print(f"{name}: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}: {cases[-1]}")
    rng = np.random.default_rng(2024)
    fa = rng.normal(0, 1, (40, 16))
    fb = rng.normal(0.3, 1.2, (32, 16))
    sets = {"a": fa.tolist(), "b": fb.tolist(), "kid": kid_ref(fa, fb), "fid": fid_ref(fa, fb)}
    print(f"sets: kid {sets['kid']}, fid {sets['fid']}")
    versions = {"numpy": np.__version__, "scipy": scipy.__version__,
                "scikit-image": skimage.__version__, "opencv": cv2.__version__,
                "pillow": PIL.__version__}
    path = OUT / "metrics_ref.json"
    path.write_text(json.dumps({"versions": versions, "pairs": cases, "sets": sets}, indent=1))
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {path}; fixtures total {total} bytes")


if __name__ == "__main__":
    main()
