#!/usr/bin/env python3
"""Checks that a dataset written by `logits-build` is Hub-ready, the way a receiving team
would use it, with nothing from this project:

- `datasets.load_dataset(DIR)` (offline) reads it through its card's `configs`, yielding the
  declared splits: `train` with the rows before the manifest's `holdout_from` and `test` with
  the rest when each shard lies on one side, else one `train` split of every row;
- each shard decodes alone: FORMAT.md's Python decoder, given only the shard's Parquet
  key-value metadata (`logits.targets`), gives the same teacher log-probs as with the
  manifest;
- a text dataset carries its `tokenizer.json`, the file the manifest names by sha256.

Usage: check_hub_dataset.py DIR
Prints `hub: P passed, F failed` and exits non-zero on a failure.
"""
import hashlib
import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from format_snippet import teacher_logprobs_fn as spec_snippet  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAILED {what}")




def main(d):
    d = pathlib.Path(d)
    manifest = json.loads((d / "manifest.json").read_text())
    card = (d / "README.md").read_text()
    check(card.startswith("---\n"), "README.md has YAML front matter")
    ds = datasets.load_dataset(str(d), cache_dir=str(d.parent / ".hf-cache"))
    h = manifest["corpus"].get("holdout_from")
    shards = manifest["shards"]
    one_side = h is not None and all(s["first_row_id"] >= h or s["last_row_id"] < h for s in shards)
    total = manifest["totals"]["rows"]
    if one_side:
        check(sorted(ds.keys()) == ["test", "train"], f"splits {sorted(ds.keys())}")
        train = ds["train"]["row_id"]
        test = ds["test"]["row_id"]
        check(all(r < h for r in train) and len(train) == sum(1 for _ in train), "train rows before holdout_from")
        check(all(r >= h for r in test) and len(train) + len(test) == total, f"test rows from {h}, {len(train)} + {len(test)} of {total}")
    else:
        check(list(ds.keys()) == ["train"], f"one split, got {list(ds.keys())}")
        check(len(ds["train"]) == total, f"{len(ds['train'])} rows of {total}")
    decode = spec_snippet()
    t = manifest["targets"]
    for s in shards:
        f = d / s["path"]
        kv = pq.read_metadata(f).metadata
        alone = {"targets": json.loads(kv[b"logits.targets"])}
        row = pq.read_table(f).slice(0, 1).to_pylist()[0]
        per_pos = t["granularity"] == "position"
        pick = (lambda c: row[c][0]) if per_pos else (lambda c: row[c])
        args = (pick("topk_ids"), pick("topk_values"), pick("logz"),
                pick("logz_temps") if t.get("temperatures") else [])
        lt = pick("topk_logtail") if t["values"] == "int8" else None
        a = decode(manifest, *args, logtail=lt)
        b = decode(alone, *args, logtail=lt)
        check(a == b, f"{f}: decoded alone differs from decoded with the manifest")
    if manifest.get("tokenizer"):
        tok = d / "tokenizer.json"
        check(tok.is_file(), "tokenizer.json copied into the dataset")
        if tok.is_file():
            check(hashlib.sha256(tok.read_bytes()).hexdigest() == manifest["tokenizer"]["sha256"], "tokenizer.json sha256")
    print(f"hub: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1])
