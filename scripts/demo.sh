#!/usr/bin/env bash
# The demo (README: "the demo on bundled fixtures"). At this stage of the project: the teacher
# pass on the digits fixture (a real classifier trained on scikit-learn's digits), then the
# dataset inspected and validated. Training, evaluation and export join as they land.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
ORT_DYLIB_PATH="$(scripts/fetch-ort.sh)"
export ORT_DYLIB_PATH
out="${1:-$root/.cache/demo}"
cargo build --release --quiet --bin logits-build --bin logits-inspect
rm -rf "$out"
mkdir -p "$out"
echo "== the teacher =="
target/release/logits-build inspect-model fixtures/digits/digits_teacher.onnx
echo
echo "== logits-build: teacher pass over the training corpus =="
target/release/logits-build build --model fixtures/digits/digits_teacher.onnx \
  --corpus fixtures/digits/train.parquet --label-column label --id-column id \
  --out "$out/digits" -k 5 --temperatures 2,4 --feature penult=hidden2:f16 \
  --license "digits fixture: scikit-learn's bundled copy of the UCI digits data (CC BY 4.0)"
echo
echo "== logits-inspect --validate =="
target/release/logits-inspect "$out/digits" --validate
