#!/usr/bin/env python3
"""Measures what the reduced value encodings do to the teacher's distribution on a real
dataset: for each encoding, the mean KL(f32 ‖ decoded) per position over the kept entries plus
the tail bucket (at T=1), the share of positions whose decoded kept mass exceeds 1, and bytes
per stored entry. Decoded by the `logits` package (the Rust reader); the format 1.0 reading of
f16/bf16 (logz + v, no exact tail) is computed beside it from the raw Parquet columns.

Usage: tail_exactness.py F32_DATASET OTHER_DATASET...   (same teacher, corpus and k)
"""
import json
import pathlib
import sys

import numpy as np
import pyarrow.parquet as pq

import logits


def buckets(lp):
    p = np.exp(lp)
    kept = p.sum(axis=1)
    tail = np.clip(1 - kept, 0, 1)
    return np.concatenate([p, tail[:, None]], axis=1), kept


def kl(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(a > 0, a * (np.log(a) - np.log(np.maximum(b, 1e-30))), 0.0)
    return t.sum(axis=1)


def decoded(path):
    lp = [b.log_probs(1.0) for b in logits.open(path).batches(256)]
    return np.concatenate(lp)


def legacy(path):
    """f16/bf16 read as format 1.0 did: log p = stored value, no renormalisation."""
    m = json.loads((pathlib.Path(path) / "manifest.json").read_text())
    enc = m["targets"]["values"]
    out = []
    for s in m["shards"]:
        t = pq.read_table(pathlib.Path(path) / s["path"], columns=["topk_values"])
        for row in t.column("topk_values").to_pylist():
            for v in row:
                v = np.asarray(v)
                out.append(v.astype(np.float64) if enc == "f16" else (v.astype(np.uint32) << 16).view(np.float32).astype(np.float64))
    return np.array(out)


def main():
    ref_path, others = sys.argv[1], sys.argv[2:]
    ref, _ = buckets(decoded(ref_path))
    print(f"{'encoding':10} {'B/entry':>8} {'mean KL (nat)':>14} {'kept mass > 1':>14}")
    for path in [ref_path] + others:
        m = json.loads((pathlib.Path(path) / "manifest.json").read_text())
        enc = m["targets"]["values"]
        bpe = m["totals"]["bytes"] / m["totals"]["entries"]
        b, kept = buckets(decoded(path))
        print(f"{enc:10} {bpe:8.2f} {kl(ref, b).mean():14.2e} {(kept > 1 + 1e-12).mean():14.2%}")
        if enc in ("f16", "bf16"):
            b, kept = buckets(legacy(path))
            print(f"{enc + ' 1.0':10} {'':8} {kl(ref, b).mean():14.2e} {(kept > 1 + 1e-12).mean():14.2%}")


if __name__ == "__main__":
    main()
