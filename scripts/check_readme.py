#!/usr/bin/env python3
"""Runs the README's command blocks as written and checks the output it shows.

In README.md, a fenced block marked `sh` is a list of shell commands and a `python` block a
Python program; both are run, in document order, in one scratch directory (so a later block
sees what an earlier one wrote) that holds this checkout's fixtures/, scripts/ and python/,
with the tools on PATH (`--bin DIR`, the test command's build). A `text` block right after a
command block is its expected output (stdout and stderr together): every line must appear,
in order, as a line of the real output, where `[..]` in a line matches any text (numbers
that vary: times, latencies, rates) and a line `...` matches any number of lines. Blocks with
no language (diagrams, templates such as the Slurm script) are not run.

Usage: check_readme.py [--bin DIR] [--python PY] [README.md]
Exit 0 when every block ran and matched; 1 otherwise, naming the block by its line.
"""
import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def blocks(text):
    """(line, info, body) of each fenced block."""
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if m:
            indent, info = m.group(1), m.group(2)
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            body = "\n".join(l[len(indent):] if l.startswith(indent) else l for l in lines[start:j])
            out.append((start, info, body))
            i = j + 1
        else:
            i += 1
    return out


def line_matches(want, got):
    parts = want.rstrip().split("[..]")
    pattern = ".*".join(re.escape(p) for p in parts)
    return re.fullmatch(pattern, got.rstrip()) is not None


def output_matches(want, got):
    """Every expected line in order among the real lines; `...` skips any number of lines."""
    want_lines = [l for l in want.split("\n")]
    got_lines = got.split("\n")

    def match(wi, gi):
        if wi == len(want_lines):
            return True
        w = want_lines[wi]
        if w.strip() == "...":
            return any(match(wi + 1, g) for g in range(gi, len(got_lines) + 1))
        # Consecutive lines, except that the first expected line may start anywhere.
        if wi == 0:
            return any(line_matches(w, got_lines[g]) and match(1, g + 1) for g in range(gi, len(got_lines)))
        return gi < len(got_lines) and line_matches(w, got_lines[gi]) and match(wi + 1, gi + 1)

    return match(0, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("readme", nargs="?", default=str(ROOT / "README.md"))
    a = ap.parse_args()
    text = pathlib.Path(a.readme).read_text()
    all_blocks = blocks(text)
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="readme-") as work:
        for name in ("fixtures", "scripts", "python", "schemas"):
            os.symlink(ROOT / name, pathlib.Path(work) / name)
        env = dict(os.environ)
        env["PATH"] = f"{a.bin}{os.pathsep}{pathlib.Path(a.python).parent}{os.pathsep}{env['PATH']}"
        for n, (line, info, body) in enumerate(all_blocks):
            if info == "sh":
                cmd = ["bash", "-euo", "pipefail", "-c", body]
            elif info == "python":
                cmd = [a.python, "-c", body]
            else:
                continue
            t0 = time.time()
            r = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            took = time.time() - t0
            nxt = all_blocks[n + 1] if n + 1 < len(all_blocks) else None
            want = nxt[2] if nxt and nxt[1] == "text" else None
            ok = r.returncode == 0 and (want is None or output_matches(want, r.stdout))
            first = body.strip().split("\n")[0][:70]
            if ok:
                passed += 1
                print(f"readme: line {line}: ok ({took:.1f}s) {first}")
            else:
                failed += 1
                why = f"exit {r.returncode}" if r.returncode else "output differs from the block at line " + str(nxt[0])
                print(f"readme: line {line}: FAIL ({why}) {first}\n--- output ---\n{r.stdout[-4000:]}\n--- expected ---\n{want}\n---")
    print(f"readme: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
