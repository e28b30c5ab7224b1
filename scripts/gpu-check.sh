#!/usr/bin/env bash
# The GPU check of the teacher pass (issue: the teacher pass on accelerators), one short run on
# a machine with an NVIDIA GPU and its driver: fetches the GPU build of ONNX Runtime (the
# onnxruntime-gpu wheel's library, the version of scripts/ort-version.txt) and the CUDA and
# cuDNN libraries it loads (NVIDIA's wheels from PyPI, into .cache/venv-gpu), then runs
# `cargo bench --bench build -- gpu` on `cuda:0` (LOGITS_GPU_DEVICE to choose another): two
# teachers written at run time (a GPT-2-small-shaped one, 50,257 entries; one with Llama-3's
# vocabulary, 128,256 entries), bare ONNX Runtime on the GPU against the build on the GPU with
# the post-processing in the graph and on the host (target: >= 0.95x bare ONNX Runtime), the
# CPU build beside them, and the GPU shards compared with the CPU ones (ids equal, largest
# value and logZ differences). Prints the table to record in BENCHMARKS.md.
# Usage: scripts/gpu-check.sh   (needs network access to PyPI and crates.io the first time)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
lib="$(scripts/fetch-ort.sh --gpu)"
py="$(LOGITS_VENV="$root/.cache/venv-gpu" scripts/pyenv.sh scripts/requirements-gpu.txt)"
# The CUDA 13 and cuDNN 9 libraries that libonnxruntime_providers_cuda.so loads.
nvidia="$("$py" -c 'import nvidia, os; print(os.pathsep.join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, "lib"))))')"
export LD_LIBRARY_PATH="$nvidia${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH="$lib"
export LOGITS_BENCH_DEVICE="${LOGITS_GPU_DEVICE:-cuda:0}"
cargo bench --bench build -- gpu
