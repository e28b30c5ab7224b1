#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library the `ort` crate loads at run time (load-dynamic),
# idempotently, from the PyPI `onnxruntime` wheel, which ships
# onnxruntime/capi/libonnxruntime.so.<version>. Prints the library's path.
#
# The version lives in scripts/ort-version.txt, in step with the `api-NN` feature of `ort` in
# the workspace Cargo.toml (ort refuses a library older than its API level).
# Cache: $LOGITS_CACHE (default: <repo>/.cache)/ort/<version>/.
#
# --gpu: the GPU build instead (the `onnxruntime-gpu` wheel of the same version: the library
# with its CUDA and TensorRT provider libraries beside it, into ort/<version>-gpu/), for
# `logits-build --device cuda|tensorrt`; it needs the NVIDIA driver, CUDA and cuDNN that
# onnxruntime-gpu's release notes name.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(tr -d '[:space:]' < "$root/scripts/ort-version.txt")"
package=onnxruntime
suffix=""
if [ "${1:-}" = "--gpu" ]; then
  package=onnxruntime-gpu
  suffix="-gpu"
fi
cache="${LOGITS_CACHE:-$root/.cache}/ort/$version$suffix"
lib="$cache/libonnxruntime.so.$version"
if [ -f "$lib" ]; then
  echo "$lib"
  exit 0
fi
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) arch=x86_64 ;;
  Linux-aarch64) arch=aarch64 ;;
  *) echo "fetch-ort: no onnxruntime wheel known for $(uname -s)-$(uname -m); set ORT_DYLIB_PATH to your libonnxruntime" >&2; exit 1 ;;
esac
command -v python3 >/dev/null || { echo "fetch-ort: python3 (with pip) is needed to download the onnxruntime wheel" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Any CPython wheel of this version carries the same C library; ask for one explicitly so the
# local Python version does not matter.
plats=()
for g in 2_17 2_27 2_28 2_31 2_34; do plats+=(--platform "manylinux_${g}_$arch"); done
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  "${plats[@]}" --python-version 3.11 --implementation cp \
  "$package==$version" -d "$tmp" >&2
wheel="$(ls "$tmp"/onnxruntime*.whl | head -n 1)"
mkdir -p "$cache"
python3 - "$wheel" "$cache" "$version" <<'PY'
import sys, zipfile, os
wheel, out, version = sys.argv[1:]
main = f"libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z:
    # The library, and the execution-provider libraries it loads from its own folder (the
    # GPU wheel's CUDA/TensorRT providers); the main library last, as the one that marks done.
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/lib") and ".so" in n]
    names.sort(key=lambda n: os.path.basename(n) == main)
    for name in names:
        base = os.path.basename(name)
        tmp = os.path.join(out, f".{base}.tmp")
        with open(tmp, "wb") as f:
            f.write(z.read(name))
        os.replace(tmp, os.path.join(out, base))
PY
echo "$lib"
