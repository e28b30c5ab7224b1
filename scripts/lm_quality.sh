#!/usr/bin/env bash
# Language-model distillation quality on the GPT-2 fixture (issue: language-model student, §7):
# the same transformer student trained for the same number of steps (a) distilled from the
# teacher's top-32 shards (forward KL at T=1 plus 0.1 next-token CE) and (b) from next-token
# labels only, both evaluated on the held-out text's shards (a dataset neither was trained on).
# Usage: scripts/lm_quality.sh [OUT_DIR] [STEPS]   Figures recorded in BENCHMARKS.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ORT_DYLIB_PATH="$(scripts/fetch-ort.sh)"
export ORT_DYLIB_PATH
out="${1:-$root/.cache/lm-quality}"
steps="${2:-600}"
cargo build --release --quiet --bin logits-build --bin logits-train
rm -rf "$out"
mkdir -p "$out"
fx=fixtures/gpt2
for part in train holdout; do
  target/release/logits-build build --model $fx/gpt2_teacher.onnx --tokenizer $fx/tokenizer.json \
    --corpus $fx/$part.jsonl --target logits --window 128 --stride 128 -k 32 --values f16 --quiet \
    --license "fixture: docstrings of CPython and NumPy (PSF and BSD licences)" --out "$out/$part"
done
student=(--lm-dim 64 --lm-layers 2 --lm-heads 4 --batch-size 16 --steps "$steps" --lr 3e-3
         --warmup 50 --seed 0 -T 1 --quiet --teacher $fx/gpt2_teacher.onnx)
target/release/logits-train train "$out/train" --out "$out/distilled" --kd 1 --ce 0.1 "${student[@]}" >/dev/null
target/release/logits-train train "$out/train" --out "$out/label-only" --kd 0 --ce 1 "${student[@]}" >/dev/null
for run in distilled label-only; do
  mkdir -p "$out/eval/$run"
  target/release/logits-train eval "$out/holdout" --student "$out/$run/student.safetensors" \
    --onnx "$out/$run/student.onnx" --json > "$out/eval/$run/report.json"
  python3 - "$out/eval/$run/report.json" "$out/$run/report.json" <<'PY'
import json, sys
ev, tr = (json.load(open(p)) for p in sys.argv[1:3])
ev["steps"], ev["train_seconds"], ev["losses"] = tr["steps"], tr["train_seconds"], tr["losses"]
json.dump(ev, open(sys.argv[1], "w"), indent=2)
PY
done
target/release/logits-train table "$out/eval/distilled" "$out/eval/label-only"
