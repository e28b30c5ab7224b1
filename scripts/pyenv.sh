#!/usr/bin/env bash
# Creates (idempotently) the project's Python virtual environment under .cache/venv with the
# pinned packages of scripts/requirements-*.txt, and prints its python path.
# Usage: scripts/pyenv.sh [requirements-file ...]   (default: scripts/requirements-test.txt)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LOGITS_VENV:-$root/.cache/venv}"
reqs=("$@")
[ ${#reqs[@]} -gt 0 ] || reqs=("$root/scripts/requirements-test.txt")
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
for r in "${reqs[@]}"; do
  stamp="$venv/.stamp-$(basename "$r")-$(sha256sum "$r" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$r" >&2
    touch "$stamp"
  fi
done
echo "$venv/bin/python"
