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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test (unit tests of every crate, end-to-end tests in tests/)"
cargo test --workspace

step "interoperability: Rust-written datasets read by pyarrow and DuckDB"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo run --quiet -p logits-format --example write_interop -- "$out/interop"
"$py" scripts/check_interop.py "$out/interop"

step "all tests passed"
