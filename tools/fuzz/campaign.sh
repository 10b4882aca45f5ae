#!/usr/bin/env bash
# Runs every fuzz target (or those named) for up to 10 M executions or SECONDS each
# (default 3600), growing fuzz/corpus-live/<target>/ from the committed fuzz/corpus/<target>/,
# then prints one line a target: executions, seconds, crashes. Crashing inputs land in
# fuzz/artifacts/<target>/; each becomes a file in fuzz/regressions/<target>/ once fixed.
# Needs nightly and cargo-fuzz: `rustup toolchain install nightly; cargo install cargo-fuzz`.
# Usage: SECONDS_PER_TARGET=600 tools/fuzz/campaign.sh [target ...]
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${SECONDS_PER_TARGET:-3600}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=($(ls fuzz/fuzz_targets | sed 's/\.rs$//'))
fi
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus-live/$t" "fuzz/artifacts/$t"
  start=$(date +%s)
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus-live/$t" "fuzz/corpus/$t" -- \
    -runs=10000000 -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" > "fuzz/logs/$t.log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$')
  crashes=$(ls "fuzz/artifacts/$t" | wc -l)
  echo "$t runs=${runs:-?} seconds=$(( $(date +%s) - start )) crashes=$crashes rc=$rc"
done
