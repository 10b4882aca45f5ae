#!/usr/bin/env bash
# Runs the README's first set-up command (paint the example photo with the embedded model) in a
# fresh `git clone` of this checkout's HEAD in a temporary folder, as a new user would, and
# checks that it wrote a PNG. The second command (the test suite) is what .ci/run itself runs on
# a clean checkout.
#
# Usage: tools/ci/readme_fresh_clone.sh   (from anywhere inside the repository)
set -euo pipefail
top=$(git rev-parse --show-toplevel)
# The command is the line after "# 1." inside the README's Set up block.
cmd=$(awk '/^# 1\./ { getline; print; exit }' "$top/README.md")
[ -n "$cmd" ] || { echo "readme_fresh_clone: no '# 1.' command in README.md" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet --no-hardlinks "$top" "$work/easel"
cd "$work/easel"
# Reuse the already compiled dependencies when a release build exists (set by .ci/run); the
# clone's own sources are what gets built.
echo "+ $cmd"
bash -c "$cmd"
out=$(printf '%s\n' "$cmd" | sed -E 's/.* -o ([^ ]+).*/\1/')
[ -s "$out" ] || { echo "readme_fresh_clone: $out was not written" >&2; exit 1; }
head -c 8 "$out" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' \
  || { echo "readme_fresh_clone: $out is not a PNG" >&2; exit 1; }
echo "readme_fresh_clone: the README's first command wrote $out in a fresh clone"
