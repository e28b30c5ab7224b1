#!/usr/bin/env python3
"""Context-coded top-k (FORMAT.md, "Context-coded top-k"): FORMAT.md's Python reference decoder
against the Rust side, on a dataset built twice from the same corpus by `logits-build`, once
with `--values int8` (plain columns) and once with `--coded`.

Checks, for every position of every row:
- the reference decoder (run as written in FORMAT.md, on the coded shards read by pyarrow)
  gives the plain build's int8 steps exactly, and its ids up to the order within runs of equal
  codes, which it gives ascending (the stored order rule);
- the Rust reader (the `logits` Python package) gives exactly the reference decoder's ids, and
  the plain build's log-probs and tails;
- the coded manifest validates against the JSON Schema and the bytes per entry are reported.

Usage: check_coded.py PLAIN_DATASET CODED_DATASET
"""
import json
import pathlib
import sys

import numpy as np
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent


def reference():
    text = (ROOT / "schemas" / "FORMAT.md").read_text()
    start = text.index("```python\nimport pyarrow.parquet as pq\nfrom array import array")
    code = text[start + len("```python\n"):text.index("```", start + 10)]
    ns = {}
    exec(code, ns)
    return ns["decode_ctx_v1"]


def main(plain, coded):
    decode = reference()
    mp = json.loads((pathlib.Path(plain) / "manifest.json").read_text())
    mc = json.loads((pathlib.Path(coded) / "manifest.json").read_text())
    assert mc["targets"]["coding"]["scheme"] == "ctx-v1", mc["targets"]
    try:
        import jsonschema
        jsonschema.validate(mc, json.loads((ROOT / "schemas" / "manifest-v1.schema.json").read_text()))
    except ImportError:
        pass
    # Plain rows, by row id: per position the ids and steps.
    want = {}
    for s in mp["shards"]:
        t = pq.read_table(pathlib.Path(plain) / s["path"], columns=["row_id", "topk_ids", "topk_values"]).to_pylist()
        for r in t:
            want[r["row_id"]] = list(zip(r["topk_ids"], r["topk_values"]))
    got, positions, entries = {}, 0, 0
    for s in mc["shards"]:
        path = pathlib.Path(coded) / s["path"]
        ids = pq.read_table(path, columns=["row_id"]).column("row_id").to_pylist()
        for rid, row in zip(ids, decode(path, mc["targets"])):
            got[rid] = row
    assert sorted(got) == sorted(want), "the two builds hold different rows"
    for rid, row in got.items():
        assert len(row) == len(want[rid]), f"row {rid}: {len(row)} positions, plain has {len(want[rid])}"
        for p, ((gi, gs), (wi, ws)) in enumerate(zip(row, want[rid])):
            assert gs == list(ws), f"row {rid} position {p}: steps {gs} != {list(ws)}"
            # Within each run of equal codes the coded build stores ids ascending.
            canon, a = list(wi), 0
            while a < len(canon):
                e = a + 1
                while e < len(canon) and ws[e] == 0:
                    e += 1
                canon[a:e] = sorted(canon[a:e])
                a = e
            assert gi == canon, f"row {rid} position {p}: ids {gi} != {canon}"
            positions += 1
            entries += len(gi)
    print(f"coded: {coded}: FORMAT.md's Python decoder gives the plain int8 build's steps and ids (ties ascending) at all {positions} positions ({entries} entries)")

    import logits
    worst, n = 0.0, 0
    dp, dc = logits.open(plain), logits.open(coded)
    for bp, bc in zip(dp.batches(64), dc.batches(64)):
        assert (bp.row_id == bc.row_id).all()
        for i, rid in enumerate(bc.row_id.tolist()):
            rc = bc.row(i)
            for p, ids in enumerate(rc["topk_ids"]):
                assert list(ids) == got[rid][p][0], f"row {rid} position {p}: the Rust reader gives {list(ids)}"
        # Log-probs: the same multiset per position (ids in ties may be permuted).
        lp, lc = bp.log_probs(), bc.log_probs()
        for q in range(bp.positions):
            k = int(bp.topk_count[q])
            a = dict(zip(bp.topk_ids[q, :k].tolist(), lp[q, :k].tolist()))
            b = dict(zip(bc.topk_ids[q, :k].tolist(), lc[q, :k].tolist()))
            assert a.keys() == b.keys()
            worst = max(worst, max(abs(a[x] - b[x]) for x in a))
        assert np.array_equal(bp.tail(), bc.tail())
        n += bp.positions
    assert worst == 0.0, worst
    print(f"coded: the Rust reader (Python package) gives the reference decoder's ids and the plain build's log-probs and tails exactly at {n} positions")
    bp_ = sum(s["bytes"] for s in mp["shards"]) / mp["totals"]["entries"]
    bc_ = sum(s["bytes"] for s in mc["shards"]) / mc["totals"]["entries"]
    print(f"coded: {bc_:.3f} bytes per entry all-in ({bp_:.3f} plain int8)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
