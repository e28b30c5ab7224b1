#!/usr/bin/env bash
# The demo (README: the first command). On the digits fixture — a 64-512-512-10 teacher trained
# on scikit-learn's digits — in the situation offline distillation is for: a corpus of 1,437
# images of which only 100 carry labels. It runs build → inspect → train → evaluate → export and
# prints one table: the teacher, a student trained from the 100 labels alone, and the same
# student distilled from the teacher's stored targets over every row; both students are
# exported to ONNX and checked through ONNX Runtime against their ndarray forward.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
ORT_DYLIB_PATH="$(scripts/fetch-ort.sh)"
export ORT_DYLIB_PATH
out="${1:-$root/.cache/demo}"
cargo build --release --quiet --bin logits-build --bin logits-inspect --bin logits-train
rm -rf "$out"
mkdir -p "$out"
teacher=fixtures/digits/digits_teacher.onnx
echo "== the teacher =="
target/release/logits-build inspect-model "$teacher"
echo
echo "== logits-build: one teacher pass over the corpus (1,437 training rows, 100 labelled; 360 held out) =="
target/release/logits-build build --model "$teacher" \
  --corpus fixtures/digits/train_100_labels.parquet fixtures/digits/holdout.parquet \
  --holdout-from 1437 --label-column label --id-column id \
  --out "$out/digits" -k 5 --temperatures 2,4 --feature penult=hidden2:f16 \
  --license "digits fixture: scikit-learn's bundled copy of the UCI digits data (CC BY 4.0)"
echo
echo "== logits-inspect --validate =="
target/release/logits-inspect "$out/digits" --validate
student=(--hidden 32 --lr 1e-2 --epochs 60 --seed 0 --teacher "$teacher" --quiet)
echo
echo "== logits-train: a 64-32-10 student from the 100 labels only =="
target/release/logits-train train "$out/digits" --out "$out/label-only" --kd 0 --ce 1 "${student[@]}"
echo
echo "== logits-train: the same student distilled (T=4, 0.9 KD + 0.1 CE) from the stored targets =="
target/release/logits-train train "$out/digits" --out "$out/distilled" "${student[@]}"
echo
echo "== teacher vs students on the 360 held-out rows =="
target/release/logits-train table "$out/label-only" "$out/distilled"
