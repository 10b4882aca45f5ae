#!/usr/bin/env bash
# The Gatys gallery of docs/gatys.md: a photo, two paintings, and `easel stylize --method gatys`
# with each control off (the default run) and on, at 256 px, written to docs/img/gatys/.
#
# Run from the repository root (builds the release binary first; the thumbnails and the mask are
# drawn by a Python with Pillow, $PYTHON, default python3):
#
#     PYTHON=/work/pyref/bin/python tools/gallery/gatys.sh [ITERATIONS]      # default 300
#
# The shared pictures are ../shared/data/images (see its SOURCES.md). Every run is on the CPU
# with the same seed-free settings, so rerunning gives the same images for the same build.
set -euo pipefail

iterations="${1:-300}"
images="../shared/data/images"
out="docs/img/gatys"
photo="$images/content/chelsea_cat.png"
starry="$images/style/vangogh_starry_night.jpg"
wave="$images/style/hokusai_great_wave_large.jpg"
size=256

cargo build --release -p easel-cli
easel=target/release/easel
mkdir -p "$out"

# Inputs, at the size the runs see them, and the mask of the spatial control: the left half
# (white) in Starry Night, the right half (black) in the Great Wave.
"${PYTHON:-python3}" - "$photo" "$starry" "$wave" "$out" "$size" <<'PY'
import sys
from PIL import Image, ImageDraw
photo, starry, wave, out, size = sys.argv[1:6]
size = int(size)
for src, name in [(photo, "photo"), (starry, "starry_night"), (wave, "great_wave")]:
    img = Image.open(src).convert("RGB")
    img.thumbnail((size, size), Image.LANCZOS)
    img.save(f"{out}/{name}.png", optimize=True)
    if name == "photo":
        w, h = img.size
        mask = Image.new("RGB", (w, h), "black")
        ImageDraw.Draw(mask).rectangle([0, 0, w // 2 - 1, h], fill="white")
        mask.save(f"{out}/mask.png")
PY

run() {
  local name="$1"
  shift
  echo "== $name: $*" >&2
  "$easel" stylize "$photo" --method gatys --max-size "$size" --device cpu \
    --iterations "$iterations" -o "$out/$name.png" "$@"
}

run starry --style "$starry"
run keep_colors --style "$starry" --keep-colors
run histogram --style "$starry" --color-transfer histogram
run style_scale_2 --style "$starry" --style-scale 2
run octaves_2 --style "$starry" --octaves 2

run masked --style "$starry" --style "$wave" --mask "$out/mask.png"

ls -l "$out"
