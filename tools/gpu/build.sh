#!/usr/bin/env bash
# Build what tools/gpu/check.sh needs on the device machine, into gpu/ (git-ignored), on a
# machine with no GPU (docs/gpu.md):
#
#   tools/gpu/build.sh
#
# gpu/easel.gz        easel with --features cuda, stripped, gzipped
# gpu/sd15_parity.gz  easel-diffusion's sd15_parity example, likewise
# gpu/easel_cpu_tests.gz  easel-cpu's unit tests (a CPU build): the ISA bit-identity tests run
#                     on the device machine's CPU, which may have AVX-512 where this one has not
# gpu/bpe_simple_vocab_16e6.txt.gz   the CLIP BPE list (../shared does not travel)
# gpu/wheels/         diffusers 0.42.1 + importlib_metadata (the device machine has no diffusers)
# gpu/BUILD.txt       the commit, date and toolchain the binaries come from (check.json quotes it)
#
# The first CUDA build compiles candle's kernels (~15-20 min on 2 shared cores); later ones
# reuse target/cuda. Then one device call: `run` with carry ["gpu"] and the command
# `tools/gpu/check.sh`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
cargo fetch
mkdir -p gpu/wheels
# The CPU test binary first, into the normal target/ (cuda-env.sh switches to target/cuda).
CPU_TESTS=$(cargo test --release -p easel-cpu --no-run --message-format=json \
  | sed -n 's/.*"executable":"\([^"]*easel_cpu-[^"]*\)".*/\1/p' | head -1)
[ -x "$CPU_TESTS" ] || { echo "build.sh: no easel-cpu test binary found" >&2; exit 1; }
strip -o gpu/easel_cpu_tests "$CPU_TESTS" && gzip -f gpu/easel_cpu_tests
# shellcheck source=/dev/null
source "$(dirname "$ROOT")/shared/tools/cuda-env.sh"   # nvcc 13.0, link stubs, CARGO_TARGET_DIR=target/cuda
cargo build --release --features cuda -p easel-cli
cargo build --release --features cuda -p easel-diffusion --example sd15_parity
strip -o gpu/easel "$CARGO_TARGET_DIR/release/easel"
strip -o gpu/sd15_parity "$CARGO_TARGET_DIR/release/examples/sd15_parity"
gzip -f gpu/easel gpu/sd15_parity
cp "$(dirname "$ROOT")/shared/data/clip/bpe_simple_vocab_16e6.txt.gz" gpu/
ls gpu/wheels/diffusers-0.42.1-*.whl > /dev/null 2>&1 \
  || pip download -q --no-deps -d gpu/wheels diffusers==0.42.1 importlib_metadata
{
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' +uncommitted changes')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(rustc --version), --features cuda, CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-?}"
} > gpu/BUILD.txt
cat gpu/BUILD.txt
ls -l gpu gpu/wheels
