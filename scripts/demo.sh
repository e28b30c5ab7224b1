#!/usr/bin/env bash
# The demo (README: "the demo on bundled fixtures"). At this stage of the project it shows the
# dataset format: it writes a synthetic per-token dataset through the library, then inspects and
# validates it with logits-inspect. It grows into build -> train -> evaluate as those land.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
out="${1:-$root/.cache/demo}"
cargo build --release --quiet --bin logits-inspect -p logits-format --examples
rm -rf "$out"
mkdir -p "$out"
target/release/examples/write_interop "$out" >/dev/null
target/release/logits-inspect "$out/position_int8" --validate
