#!/usr/bin/env python3
"""Reference edge maps of OpenCV's `cv2.Canny` for `crates/easel-pipeline/tests/canny_parity.rs`.

ControlNet (canny) preprocessing as diffusers and lllyasviel/ControlNet do it:
`cv2.Canny(np.array(pil_rgb_image), low, high)` on the RGB uint8 array (3 channels; OpenCV
takes, per pixel, the Sobel gradient of the channel with the largest magnitude), aperture 3,
L1 magnitude unless `L2gradient=True`. No blur.

Usage (from the repository root; numpy, pillow, opencv-python-headless in /work/venv):

    /work/venv/bin/python tools/ref/canny_ref.py

Inputs: real photos from `/work/shared/data/images/content/` and two paintings from
`/work/shared/data/images/style/` (see `IMAGES`), converted to RGB and, where the long side is
over 256 px, resized with PIL (LANCZOS) so that it is 256 px (aspect ratio kept, sides rounded).

Writes to `crates/easel-pipeline/tests/fixtures/`:

* `canny_<name>.png`: the resized RGB uint8 input, exactly the array OpenCV saw.
* `canny_<name>_<case>.png`: the 8-bit grayscale edge map (0 or 255) of `cv2.Canny` for each
  case of `CASES` (`l1_100_200` is the diffusers default).
* `canny_cases.txt`: the manifest the Rust test reads: one line per (image, case),
  `<name> <case> <low> <high> <l2gradient 0|1>`, after `#` comment lines that record the
  versions used.

The script also checks that OpenCV's result does not depend on its thread count (Canny is
computed in row strips in parallel) before writing anything.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "easel-pipeline" / "tests" / "fixtures"
DATA = Path("/work/shared/data/images")
MAX_SIDE = 256

# (fixture name, source path under DATA)
IMAGES = [
    ("astronaut", "content/astronaut_eileen_collins.png"),
    ("cat", "content/chelsea_cat.png"),
    ("coffee", "content/coffee_cup.png"),
    ("hopper", "content/grace_hopper_small_128.jpg"),
    ("hubble", "content/hubble_deep_field.jpg"),
    ("moraine", "content/moraine_lake.jpg"),
    ("mulberry", "content/nyc_mulberry_street_c1900.jpg"),
    ("rocket", "content/rocket_launch_night.jpg"),
    ("great_wave", "style/hokusai_great_wave_large.jpg"),
    ("scream", "style/munch_the_scream.jpg"),
]

# (case name, low, high, L2gradient)
CASES = [
    ("l1_100_200", 100, 200, False),
    ("l1_50_150", 50, 150, False),
    ("l2_100_200", 100, 200, True),
]


def load(path: Path) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if max(w, h) > MAX_SIDE:
        scale = MAX_SIDE / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.LANCZOS)
    arr = np.array(img)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def canny(arr: np.ndarray, low: float, high: float, l2: bool) -> np.ndarray:
    return cv2.Canny(arr, low, high, apertureSize=3, L2gradient=l2)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [
        "# written by tools/ref/canny_ref.py",
        f"# opencv {cv2.__version__}, numpy {np.__version__}, pillow {PIL.__version__}",
        "# <name> <case> <low> <high> <l2gradient 0|1>",
    ]
    total = 0
    for name, rel in IMAGES:
        arr = load(DATA / rel)
        path = OUT / f"canny_{name}.png"
        Image.fromarray(arr, "RGB").save(path, optimize=True)
        assert np.array_equal(np.array(Image.open(path)), arr)
        total += path.stat().st_size
        for case, low, high, l2 in CASES:
            cv2.setNumThreads(1)
            single = canny(arr, low, high, l2)
            cv2.setNumThreads(-1)
            multi = canny(arr, low, high, l2)
            assert np.array_equal(single, multi), f"{name} {case}: result depends on threads"
            assert single.dtype == np.uint8 and single.shape == arr.shape[:2]
            assert set(np.unique(single)) <= {0, 255}
            epath = OUT / f"canny_{name}_{case}.png"
            Image.fromarray(single, "L").save(epath, optimize=True)
            total += epath.stat().st_size
            lines.append(f"{name} {case} {low} {high} {int(l2)}")
            print(f"{name:11s} {arr.shape[1]}x{arr.shape[0]} {case:11s} "
                  f"edges {np.count_nonzero(single) / single.size:6.2%}")
    (OUT / "canny_cases.txt").write_text("\n".join(lines) + "\n")
    print(f"fixtures: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
