#!/usr/bin/env python3
"""Derives fixtures/digits/train_100_labels.parquet from fixtures/digits/train.parquet.

The same 1,437 training images, with the label kept on 10 per class (100 rows, chosen with a
seeded generator, stratified) and null elsewhere: the situation offline distillation is for —
a corpus that is mostly unlabelled, and a teacher (trained elsewhere, on more labels) run over
it once. The demo trains a student from these 100 labels alone and one distilled from the
teacher's targets over all 1,437 rows, and compares them on the held-out split.

Usage: PY=$(scripts/pyenv.sh scripts/requirements-fixtures.txt); $PY scripts/make_few_labels.py
"""
import hashlib
import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIR = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "digits"
NAME = "train_100_labels.parquet"
PER_CLASS = 10
SEED = 0


def main():
    t = pq.read_table(DIR / "train.parquet")
    y = np.array(t["label"].to_pylist())
    rng = np.random.default_rng(SEED)
    keep = np.zeros(len(y), bool)
    for c in np.unique(y):
        keep[rng.choice(np.flatnonzero(y == c), PER_CLASS, replace=False)] = True
    labels = pa.array([int(v) if k else None for v, k in zip(y, keep)], pa.int64())
    t = t.set_column(t.schema.get_field_index("label"), "label", labels)
    pq.write_table(t, DIR / NAME)
    info_path = DIR / "FIXTURES.json"
    info = json.loads(info_path.read_text())
    data = (DIR / NAME).read_bytes()
    info["files"][NAME] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    info["few_labels"] = {
        "file": NAME,
        "made_by": "scripts/make_few_labels.py (after scripts/make_fixtures.py)",
        "rows": int(len(y)),
        "labelled_rows": int(keep.sum()),
        "rule": f"{PER_CLASS} labels per class kept, numpy default_rng({SEED}), the rest null",
    }
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {DIR / NAME}: {int(keep.sum())} of {len(y)} rows labelled")


if __name__ == "__main__":
    main()
