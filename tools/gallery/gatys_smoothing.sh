#!/usr/bin/env bash
# Activation smoothing (Wang et al., CVPR 2021) against plain Gatys on EfficientNet-Lite0, as
# docs/gatys.md reports it: `easel compare` paints every photo with plain Gatys and with
# `smoothing=true` at each style weight given, one comparison per painting, all at the same size
# and iterations, and prints the mean of every metric per method and painting (Markdown).
#
# Run from the repository root (builds the release binary first):
#
#     tools/gallery/gatys_smoothing.sh [ITERATIONS] [SIZE] [SMOOTHED_STYLE_WEIGHTS...]
#
# Defaults: 200 iterations, 256 px, smoothed style weights 1e3 1e4. The photos and paintings are
# ../shared/data/images (see its SOURCES.md); results go to target/gatys_smoothing/.
set -euo pipefail

iterations="${1:-200}"
size="${2:-256}"
shift $(($# > 2 ? 2 : $#))
weights=("$@")
[ ${#weights[@]} -gt 0 ] || weights=(1e3 1e4)
images="../shared/data/images"
out="target/gatys_smoothing"
photos=("$images/content/chelsea_cat.png" "$images/content/moraine_lake.jpg"
  "$images/content/astronaut_eileen_collins.png")
paintings=(vangogh_starry_night.jpg hokusai_great_wave_large.jpg kandinsky_composition_vii.jpg)

cargo build --release -p easel-cli
easel=target/release/easel
uses=(--use "gatys@iterations=$iterations")
for w in "${weights[@]}"; do
  uses+=(--use "gatys@iterations=$iterations@smoothing=true@style-weight=$w")
done
for painting in "${paintings[@]}"; do
  echo "== ${painting%.*}" >&2
  "$easel" compare "${photos[@]}" --style "$images/style/$painting" "${uses[@]}" \
    --max-size "$size" --device cpu -o "$out/${painting%.*}" >&2
done

python3 - "$out" "${paintings[@]}" <<'PY'
import json, sys
out, paintings = sys.argv[1], sys.argv[2:]
for painting in paintings:
    report = json.load(open(f"{out}/{painting.rsplit('.', 1)[0]}/metrics.json"))
    metrics = report["metrics"]
    print(f"\n{painting}\n")
    print("| method | " + " | ".join(f"{m['key']} ({'↑' if m['better'] == 'higher' else '↓'})"
                                   for m in metrics) + " |")
    print("|---|" + "---:|" * len(metrics))
    for method in report["methods"]:
        rows = [r for r in report["rows"] if r["spec"] == method["spec"] and r["status"] == "painted"]
        means = [sum(r["values"][m["key"]] for r in rows) / len(rows) for m in metrics]
        print(f"| `{method['spec']}` | " + " | ".join(f"{v:.4g}" for v in means) + " |")
PY
