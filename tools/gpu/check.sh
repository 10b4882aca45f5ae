#!/usr/bin/env bash
# Every GPU figure the project reports, in one command (docs/gpu.md):
#
#   tools/gpu/check.sh [--config sd15|tiny] [--device cuda|cpu] [--gpu-dir gpu] [--out DIR]
#       [--easel BIN] [--parity-bin BIN] [--cpu-tests BIN] [--python PY] [--budget SECONDS]
#       [--limit-scale N] [--only STEP,...] [--dry-run]
#
# From the carried binaries in --gpu-dir (easel.gz: `easel` built with --features cuda;
# sd15_parity.gz: easel-diffusion's sd15_parity example; easel_cpu_tests.gz: easel-cpu's test
# binary; wheels/: diffusers; BUILD.txt: the commit
# they were built from; tools/gpu/build.sh makes all of them) and the machine's PyTorch, it runs,
# in this order, each step with its own timeout (and never past --budget in total), so that one
# failure or hang costs that step only:
#
#   parity        SD 1.5 f16 parity vs diffusers/transformers (UNet, ControlNet, CLIP):
#                 tools/ref/sd15_parity.py, then sd15_parity --dtype f16 --tol 1e-2
#   bench         tools/ref/bench_diffusers.py: parity, unet-cfg, unet-controlnet, vae-encode,
#                 vae-decode, ours vs diffusers eager and CUDA-graphed
#   bench-long    the same script on the same weights: stylize 512² (35 steps), learn
#   stylize-1024  easel bench --workload stylize --size 1024 --dtype f16 --vae-tiling: peak memory
#   adain-f16     tools/ref/adain_bench.py: AdaIN vs PyTorch, 512² and 1024², f16
#   stytr         tools/ref/stytr_bench.py: StyTr² vs PyTorch, 512² and 1024², f32
#   adain-f32     as adain-f16 in f32
#   cpu-isa       easel-cpu's unit tests on this machine's CPU (easel_cpu_tests.gz): the kernels'
#                 bit-identity across AVX-512 / AVX2 / portable, where this CPU has AVX-512
#
# Writes to --out (default $OUT, else ./gpu-check-out): check.json (every step's status, time,
# exit code and parsed results, plus a "figures" digest), check.log (this script's log),
# logs/STEP.log (each step's output) and each step's own result file. Exit status 0 when every
# step passed, 1 when one failed or timed out, 2 on a usage error.
#
# `--config tiny --device cpu` runs the same steps on the small test models on the CPU (f32,
# small sizes, few runs): how the script is checked without a GPU, e.g.
#   tools/gpu/check.sh --config tiny --device cpu --easel target/release/easel \
#       --parity-bin target/release/examples/sd15_parity --python /work/pyref/bin/python
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CONFIG=sd15
DEVICE=cuda
GPU_DIR=gpu
OUT_DIR=${OUT:-}
EASEL=""
PARITY_BIN=""
CPU_TESTS=""
PY=""
BUDGET=480
LIMIT_SCALE=""
ONLY=""
DRY_RUN=0
STEPS=(parity bench bench-long stylize-1024 adain-f16 stytr adain-f32 cpu-isa)

usage() {
  sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}
die_usage() {
  echo "check.sh: $*" >&2
  echo "run tools/gpu/check.sh --help for the options" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=${2-}; shift 2 || die_usage "--config needs a value" ;;
    --device) DEVICE=${2-}; shift 2 || die_usage "--device needs a value" ;;
    --gpu-dir) GPU_DIR=${2-}; shift 2 || die_usage "--gpu-dir needs a value" ;;
    --out) OUT_DIR=${2-}; shift 2 || die_usage "--out needs a value" ;;
    --easel) EASEL=${2-}; shift 2 || die_usage "--easel needs a value" ;;
    --parity-bin) PARITY_BIN=${2-}; shift 2 || die_usage "--parity-bin needs a value" ;;
    --cpu-tests) CPU_TESTS=${2-}; shift 2 || die_usage "--cpu-tests needs a value" ;;
    --python) PY=${2-}; shift 2 || die_usage "--python needs a value" ;;
    --budget) BUDGET=${2-}; shift 2 || die_usage "--budget needs a value" ;;
    --limit-scale) LIMIT_SCALE=${2-}; shift 2 || die_usage "--limit-scale needs a value" ;;
    --only) ONLY=${2-}; shift 2 || die_usage "--only needs a value" ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument $1" ;;
  esac
done
case "$CONFIG" in sd15|tiny) ;; *) die_usage "--config must be sd15 or tiny, got '$CONFIG'" ;; esac
case "$DEVICE" in cuda|cpu) ;; *) die_usage "--device must be cuda or cpu, got '$DEVICE'" ;; esac
case "$BUDGET" in ''|*[!0-9]*) die_usage "--budget must be a whole number of seconds, got '$BUDGET'" ;; esac
# The step limits are sized for the device machine; the CPU's tiny run (2 shared cores here)
# gets three times as long by default.
[ -n "$LIMIT_SCALE" ] || { [ "$DEVICE" = cpu ] && LIMIT_SCALE=3 || LIMIT_SCALE=1; }
case "$LIMIT_SCALE" in ''|*[!0-9]*|0) die_usage "--limit-scale must be a whole number ≥ 1, got '$LIMIT_SCALE'" ;; esac
if [ -n "$ONLY" ]; then
  for s in ${ONLY//,/ }; do
    case " ${STEPS[*]} " in *" $s "*) ;; *) die_usage "--only: unknown step '$s' (steps: ${STEPS[*]})" ;; esac
  done
fi

cd "$ROOT"
case "$GPU_DIR" in /*) ;; *) GPU_DIR="$ROOT/$GPU_DIR" ;; esac
[ -n "$OUT_DIR" ] || OUT_DIR="$ROOT/gpu-check-out"
mkdir -p "$OUT_DIR/logs" || die_usage "cannot create --out $OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/easel-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
: > "$OUT_DIR/steps.jsonl"
exec > >(tee -a "$OUT_DIR/check.log") 2>&1
START=$(date +%s)
say() { echo "[check $(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }

# Per-run settings: the figures of docs/gpu.md on CUDA, the small models on the CPU.
if [ "$CONFIG" = sd15 ]; then
  SIZE=512 BIG=1024 FAST_SIZES="512 1024" RUNS=20 WARMUP=3 LONG_RUNS=3 BIG_RUNS=2
  FAST_RUNS=20 STYTR_RUNS=5 TINY_FLAG=""
else
  SIZE=128 BIG=256 FAST_SIZES="128" RUNS=3 WARMUP=1 LONG_RUNS=1 BIG_RUNS=1
  FAST_RUNS=2 STYTR_RUNS=1 TINY_FLAG="--tiny"
fi
if [ "$DEVICE" = cuda ]; then
  DT=f16 PARITY_DT=fp16 PARITY_TOL=1e-2
  export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  DT=f32 PARITY_DT=fp32 PARITY_TOL=1e-4
fi
THREADS=$(nproc)
[ "$DEVICE" = cpu ] && THREADS=2
export RAYON_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1

# Python: the GPU machine's PyTorch venv, else python3; diffusers from the carried wheels if absent.
if [ -z "$PY" ]; then
  if [ -x /opt/torch/.venv/bin/python ]; then PY=/opt/torch/.venv/bin/python; else PY=python3; fi
fi
# A carried binary: BIN as given, else GPU_DIR/NAME.gz unpacked into WORK, else GPU_DIR/NAME.
carried() {
  local name=$1 given=$2
  if [ -n "$given" ]; then
    case "$given" in /*) echo "$given" ;; *) echo "$ROOT/$given" ;; esac
  elif [ -f "$GPU_DIR/$name.gz" ]; then
    gunzip -c "$GPU_DIR/$name.gz" > "$WORK/$name" && chmod +x "$WORK/$name" && echo "$WORK/$name"
  elif [ -x "$GPU_DIR/$name" ]; then
    echo "$GPU_DIR/$name"
  fi
}
EASEL=$(carried easel "$EASEL")
PARITY_BIN=$(carried sd15_parity "$PARITY_BIN")
CPU_TESTS=$(carried easel_cpu_tests "$CPU_TESTS")
BPE="$GPU_DIR/bpe_simple_vocab_16e6.txt.gz"
[ -f "$BPE" ] || BPE="$(dirname "$ROOT")/shared/data/clip/bpe_simple_vocab_16e6.txt.gz"

say "config $CONFIG, device $DEVICE, out $OUT_DIR, budget ${BUDGET}s, step limits x$LIMIT_SCALE"
say "easel: ${EASEL:-missing}; sd15_parity: ${PARITY_BIN:-missing}; easel-cpu tests: ${CPU_TESTS:-missing}"
say "python: $PY; bpe: $BPE"
[ -f "$GPU_DIR/BUILD.txt" ] && say "carried build: $(tr '\n' ' ' < "$GPU_DIR/BUILD.txt")"
if [ "$DRY_RUN" = 0 ] && ! "$PY" -c "import diffusers" 2>/dev/null; then
  if ls "$GPU_DIR"/wheels/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$GPU_DIR"/wheels/*.whl \
      && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    say "diffusers installed from $GPU_DIR/wheels into $WORK/site"
  else
    say "diffusers is not importable by $PY and $GPU_DIR/wheels has no wheel: the Python steps will fail"
  fi
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -n), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "cpu flags: $(grep -m1 -o -w 'avx512f\|avx2\|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  else
    grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'
  fi
  "$PY" -c "import torch; print('torch', torch.__version__)" 2>&1
} > "$OUT_DIR/device.txt"
cat "$OUT_DIR/device.txt"

# One step per function; each runs in its own `timeout`, with the variables below exported.
export ROOT OUT_DIR WORK PY EASEL PARITY_BIN CPU_TESTS BPE CONFIG DEVICE DT PARITY_DT PARITY_TOL SIZE BIG \
  FAST_SIZES RUNS WARMUP LONG_RUNS BIG_RUNS FAST_RUNS STYTR_RUNS TINY_FLAG THREADS
need_easel() { [ -n "$EASEL" ] || { echo "no easel binary (--easel, or easel.gz in the gpu dir)"; return 90; }; }
step_parity() {
  [ -n "$PARITY_BIN" ] || { echo "no sd15_parity binary (--parity-bin, or sd15_parity.gz in the gpu dir)"; return 90; }
  "$PY" tools/ref/sd15_parity.py --out "$WORK/sd15" --device "$DEVICE" --dtype "$PARITY_DT" $TINY_FLAG \
    > "$WORK/sd15_meta.json" || return
  local rc=0
  "$PARITY_BIN" --dir "$WORK/sd15" --dtype "$DT" --device "$DEVICE" --tol "$PARITY_TOL" \
    > "$OUT_DIR/sd15_parity.json" || rc=$?
  cat "$OUT_DIR/sd15_parity.json"
  rm -rf "$WORK/sd15"
  return $rc
}
step_bench() {
  need_easel || return
  "$PY" tools/ref/bench_diffusers.py --easel "$EASEL" --config "$CONFIG" --device "$DEVICE" \
    --bpe "$BPE" --out "$WORK/bench" --size "$SIZE" --runs "$RUNS" --warmup "$WARMUP" \
    --workloads unet-cfg,unet-controlnet,vae-encode,vae-decode --json "$OUT_DIR/bench.json"
}
step_bench_long() {
  need_easel || return
  local weights=()
  [ -d "$WORK/bench/sd" ] && [ -d "$WORK/bench/controlnet" ] \
    && weights=(--sd "$WORK/bench/sd" --controlnet "$WORK/bench/controlnet")
  "$PY" tools/ref/bench_diffusers.py --easel "$EASEL" --config "$CONFIG" --device "$DEVICE" \
    --bpe "$BPE" --out "$WORK/bench" "${weights[@]}" --size "$SIZE" --runs "$LONG_RUNS" \
    --warmup 1 --workloads stylize,learn --json "$OUT_DIR/bench_long.json"
}
step_stylize_1024() {
  need_easel || return
  "$EASEL" bench --config "$CONFIG" --device "$DEVICE" --dtype "$DT" --workload stylize \
    --size "$BIG" --vae-tiling --runs "$BIG_RUNS" --warmup 1 --json > "$OUT_DIR/stylize_large.json"
  local rc=$?
  cat "$OUT_DIR/stylize_large.json"
  return $rc
}
adain() {
  need_easel || return
  "$PY" tools/ref/adain_bench.py --device "$DEVICE" --dtype "$1" --easel "$EASEL" --sizes $FAST_SIZES \
    --runs "$FAST_RUNS" --warmup 2 --threads "$THREADS" --json "$OUT_DIR/adain_$1.json"
}
step_adain_f16() {
  if [ "$DEVICE" != cuda ]; then echo "f16 AdaIN is measured on CUDA only"; return 91; fi
  adain f16
}
step_adain_f32() { adain f32; }
step_stytr() {
  need_easel || return
  "$PY" tools/ref/stytr_bench.py --device "$DEVICE" --easel "$EASEL" --sizes $FAST_SIZES \
    --runs "$STYTR_RUNS" --threads "$THREADS" --json "$OUT_DIR/stytr.json"
}
step_cpu_isa() {
  [ -n "$CPU_TESTS" ] || { echo "no easel-cpu test binary (--cpu-tests, or easel_cpu_tests.gz in the gpu dir)"; return 90; }
  local rc=0
  "$CPU_TESTS" --test-threads 2 > "$WORK/cpu_tests.txt" 2>&1 || rc=$?
  cat "$WORK/cpu_tests.txt"
  "$PY" - "$WORK/cpu_tests.txt" "$rc" > "$OUT_DIR/cpu_isa.json" <<'PYEOF'
import json, re, sys
text = open(sys.argv[1]).read()
flags = open("/proc/cpuinfo").read().split("\n\nprocessor")[0]
tests = dict(re.findall(r"^test (\S+) \.\.\. (\w+)", text, re.M))
print(json.dumps({"pass": sys.argv[2] == "0", "avx512f": " avx512f" in flags,
                  "avx2_fma": " avx2" in flags and " fma" in flags, "tests": tests}))
PYEOF
  return $rc
}
export -f need_easel step_cpu_isa adain step_parity step_bench step_bench_long step_stylize_1024 step_adain_f16 \
  step_adain_f32 step_stytr

# Timeouts on CUDA (H100/H200: each step's usual time is about half of it), times --limit-scale.
declare -A LIMIT=([parity]=110 [bench]=150 [bench-long]=110 [stylize-1024]=80 [adain-f16]=45
  [stytr]=70 [adain-f32]=45 [cpu-isa]=40)
FAILED=0
for step in "${STEPS[@]}"; do
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$step,"* ]]; then continue; fi
  fn="step_${step//-/_}"
  left=$(( BUDGET - ($(date +%s) - START) ))
  limit=$(( ${LIMIT[$step]} * LIMIT_SCALE ))
  [ "$left" -lt "$limit" ] && limit=$left
  status=""
  rc=0
  t0=$(date +%s)
  if [ "$limit" -lt 10 ]; then
    status=skipped-budget rc=-1
    say "$step: skipped, ${left}s of the budget left"
  elif [ "$DRY_RUN" = 1 ]; then
    status=dry-run
    say "$step: would run $fn with a ${limit}s limit"
  else
    say "$step: start (limit ${limit}s)"
    timeout --kill-after=10 "$limit" bash -c "$fn" > "$OUT_DIR/logs/$step.log" 2>&1 || rc=$?
    case $rc in
      0) status=pass ;;
      124|137) status=timeout ;;
      90) status=skipped-missing ;;
      91) status=skipped-device ;;
      *) status=fail ;;
    esac
    case $status in pass|skipped-device) ;; *) FAILED=1 ;; esac
    say "$step: $status (rc $rc) in $(( $(date +%s) - t0 ))s; last lines:"
    tail -n 4 "$OUT_DIR/logs/$step.log" | sed 's/^/    /'
  fi
  printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s, "limit_s": %s}\n' \
    "$step" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$OUT_DIR/steps.jsonl"
done

"$PY" "$ROOT/tools/gpu/summarize.py" --out "$OUT_DIR" --config "$CONFIG" --device "$DEVICE" \
  --wall "$(( $(date +%s) - START ))" ${GPU_DIR:+--build "$GPU_DIR/BUILD.txt"} \
  || { say "summarize.py failed: the per-step files in $OUT_DIR are all there is"; FAILED=1; }
say "done in $(( $(date +%s) - START ))s: $OUT_DIR/check.json"
exit $FAILED
