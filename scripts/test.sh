#!/usr/bin/env bash
# The test command (README: "Run the tests"). On a fresh machine it sets up what it needs:
# Rust crates come from crates.io through cargo, Python packages from PyPI into .cache/venv.
# Runs: formatting and lint checks, every crate's unit tests, the end-to-end tests in tests/
# (real binaries on real fixtures), and the Python interoperability checks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TERM_COLOR=never

step() { printf '\n== %s ==\n' "$*"; }

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found: install Python 3.10+" >&2; exit 1; }

step "python environment (pinned, scripts/requirements-test.txt)"
py="$(scripts/pyenv.sh)"

step "ONNX Runtime library (scripts/fetch-ort.sh)"
ORT_DYLIB_PATH="$(scripts/fetch-ort.sh)"
export ORT_DYLIB_PATH
echo "$ORT_DYLIB_PATH"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test (unit tests of every crate, end-to-end tests in tests/)"
log="$(mktemp)"
# The teacher-family matrix (tests/zoo.rs) checks each dataset with the build oracle in this
# Python.
LOGITS_ORACLE_PY="$py" cargo test --workspace 2>&1 | tee "$log"

step "interoperability: Rust-written datasets read by pyarrow and DuckDB"
out="$(mktemp -d)"
trap 'rm -rf "$out" "$log"' EXIT
cargo run --quiet -p logits-format --example write_interop -- "$out/interop"
"$py" scripts/check_interop.py "$out/interop" | tee -a "$log"

step "build oracle: logits-build output against ONNX Runtime's Python API"
target/debug/logits-build build --model fixtures/digits/digits_teacher.onnx \
  --corpus fixtures/digits/train.parquet --out "$out/digits" --label-column label --id-column id \
  -k 5 --temperatures 2,4 --feature penult=hidden2:f16 --rows-per-shard 500 --sessions 2 --quiet
"$py" scripts/check_build_oracle.py fixtures/digits/digits_teacher.onnx fixtures/digits/train.parquet "$out/digits" | tee -a "$log"
target/debug/logits-build build --model fixtures/digits/digits_teacher_softmax.onnx \
  --corpus fixtures/digits/holdout.parquet --out "$out/digits_softmax" --label-column label \
  -k 10 --temperatures 2 --feature h1=hidden1:int8 --rows-per-shard 100 --batch-size 17 --quiet
"$py" scripts/check_build_oracle.py fixtures/digits/digits_teacher_softmax.onnx fixtures/digits/holdout.parquet "$out/digits_softmax" | tee -a "$log"

target/debug/logits-build build --model fixtures/tinylm/tiny_lm.onnx --tokenizer fixtures/tinylm/tokenizer.json \
  --corpus fixtures/tinylm/holdout.jsonl --out "$out/tinylm" --window 64 --stride 48 -k 16 --temperatures 2 \
  --sample 20 --feature h=hidden:f16 --feature hm=hidden:mean --rows-per-shard 20 --batch-size 8 --sessions 2 --quiet
"$py" scripts/check_build_oracle.py fixtures/tinylm/tiny_lm.onnx fixtures/tinylm/holdout.jsonl "$out/tinylm" fixtures/tinylm/tokenizer.json | tee -a "$log"

step "the Python package (python/): numpy batches, the torch IterableDataset and KD losses"
# Built by maturin against this checkout's target/ (dev profile: the test build's artifacts are
# reused); users run plain `pip install ./python`, which builds it optimised.
MATURIN_PEP517_ARGS="--profile dev" "$py" -m pip install --quiet --disable-pip-version-check ./python
target/debug/logits-build build --model fixtures/digits/digits_teacher.onnx \
  --corpus fixtures/digits/train.parquet fixtures/digits/holdout.parquet --holdout-from 1437 \
  --label-column label --id-column id --out "$out/digits_int8" -k 5 --temperatures 2,4 \
  --feature penult=hidden2:f16 --values int8 --rows-per-shard 300 --quiet
target/debug/logits-build build --model fixtures/tinylm/tiny_lm.onnx --tokenizer fixtures/tinylm/tokenizer.json \
  --corpus fixtures/tinylm/holdout.jsonl --out "$out/tinylm_bf16" --window 64 --stride 48 -k 16 --temperatures 2 \
  --sample 20 --feature h=hidden:f16 --values bf16 --rows-per-shard 20 --batch-size 8 --quiet
"$py" scripts/check_python_package.py "$out/digits_int8" "$out/tinylm_bf16" "$out/digits" | tee -a "$log"

step "context-coded top-k: FORMAT.md's Python decoder against the Rust writer and reader"
head -n 40 fixtures/gpt2/holdout.jsonl > "$out/gpt2_40.jsonl"
for enc in "--values int8" "--coded"; do
  target/debug/logits-build build --model fixtures/gpt2/gpt2_teacher.onnx --target logits \
    --tokenizer fixtures/gpt2/tokenizer.json --corpus "$out/gpt2_40.jsonl" --window 64 --stride 48 -k 32 \
    $enc --rows-per-shard 20 --out "$out/gpt2${enc//[- ]/_}" --quiet
done
"$py" scripts/check_coded.py "$out/gpt2__values_int8" "$out/gpt2__coded" | tee -a "$log"

step "the README: every sh and python block run as written, its shown output checked"
# The tools on PATH are this build's (scripts/check_readme.py --bin); the README's
# `pip install ./python` reuses the package build above.
MATURIN_PEP517_ARGS="--profile dev" "$py" scripts/check_readme.py --bin "$root/target/debug" --python "$py" | tee -a "$log"

step "all tests passed"
# One closing line over everything above: cargo's test results and the Python checks.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^(interop|oracle|python|readme): [0-9]+ passed, [0-9]+ failed/ { p += $2; f += $4 }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
