#!/usr/bin/env bash
# Runs every fuzz target (fuzz/README.md) with a budget, and prints one line of figures per
# target: executions, seconds, executions/s, crashes. Not part of the test command (it needs a
# nightly toolchain and minutes per target).
#
#   scripts/fuzz.sh                 # 1,000,000 executions per target
#   scripts/fuzz.sh --runs 20000    # fewer
#   scripts/fuzz.sh --seconds 300   # a time budget per target instead
#   scripts/fuzz.sh --runs 1000000 shard train_reader   # some targets only
#   scripts/fuzz.sh --sanitizer address                 # with AddressSanitizer (~15x slower)
#
# By default no sanitizer (the code under test is safe Rust; the sanitizer is for `unsafe`
# code) and the targets' temporary datasets on /dev/shm where it exists: ~2,000 executions/s
# for the shard targets instead of ~130.
#
# A crash stops its target and is saved under fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> <file>` and add it as a regression test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
limit=(-runs=1000000)
sanitizer=none
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) limit=(-runs="$2"); shift 2 ;;
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    --sanitizer) sanitizer="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(manifest shard train_reader)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd "$root/fuzz"
[[ -d /dev/shm && -w /dev/shm ]] && export TMPDIR=/dev/shm
status=0
for t in "${targets[@]}"; do
  log="$(mktemp)"
  mkdir -p "corpus/$t"
  start=$(date +%s)
  if cargo +nightly fuzz run "$t" --sanitizer "$sanitizer" -- "${limit[@]}" -print_final_stats=1 >"$log" 2>&1; then
    crashes=0
  else
    crashes=1
    status=1
    grep -E "panicked|ERROR|SUMMARY|artifact" "$log" | head -20 >&2 || true
  fi
  secs=$(( $(date +%s) - start ))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  echo "fuzz $t: ${runs:-?} executions, ${secs} s (build included), ${rate:-?} exec/s, crashes: $crashes"
  rm -f "$log"
done
exit $status
