#!/usr/bin/env python3
"""Correctness oracle for logits-build: recompute a dataset with ONNX Runtime's Python API.

Runs the same ONNX model on the same corpus with the `onnxruntime` Python package (same
version as the library logits-build loads), batching exactly as the build did (rows cut per
shard from the shard's start, `batch_size` rows per run), and checks every row of the dataset:
top-k ids exact (descending logit, ties to the lower id), raw logits and logZ (T=1 and each
stored temperature) within 1e-5 relative, features within their encoding's error, labels, ids,
and the sha256-v1 input hash recomputed from FORMAT.md's definition.

Usage: check_build_oracle.py MODEL CORPUS.parquet DATASET
"""
import hashlib
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        if failed <= 20:
            print(f"FAIL: {what}", file=sys.stderr)


def logsumexp(z, t):
    z = np.float64(z) / t
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def close(a, b, rel=1e-5):
    a, b = np.float64(a), np.float64(b)
    return np.all(np.abs(a - b) <= rel * np.maximum(1.0, np.abs(b)))


def main(model_path, corpus_path, ds):
    m = json.loads((ds / "manifest.json").read_text())
    t = m["targets"]
    feats = m["features"]
    model = onnx.load(model_path)
    have = {o.name for o in model.graph.output}
    for f in feats:
        if f["tensor"] not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(f["tensor"]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    corpus = pq.read_table(corpus_path).to_pylist()
    inputs = [i["name"] for i in m["teacher"]["inputs"]]
    mapping = dict(m["corpus"]["options"]["inputs"])
    per, bs = m["build"]["rows_per_shard"], m["build"]["batch_size"]
    rows = {}
    for s in m["shards"]:
        for r in pq.read_table(ds / s["path"]).to_pylist():
            rows[r["row_id"]] = r
    check(len(rows) == len(corpus) == m["corpus"]["rows"], "row count")
    temps = t.get("temperatures", [])
    k = t["topk"]["fixed"]["k"]
    prob = t["output_is_probability"]
    for start in range(0, len(corpus), per):
        end = min(start + per, len(corpus))
        for b0 in range(start, end, bs):
            b1 = min(b0 + bs, end)
            feed = {i: np.array([corpus[r][mapping[i]] for r in range(b0, b1)], dtype=np.float32) for i in inputs}
            names = [t["output"]] + [f["tensor"] for f in feats]
            outs = dict(zip(names, sess.run(names, feed)))
            z = outs[t["output"]].astype(np.float32)
            if prob:
                z = np.log(np.maximum(z, np.float32(1e-45)))
            for j, rid in enumerate(range(b0, b1)):
                row = rows.get(rid)
                if row is None:
                    check(False, f"row {rid} missing")
                    continue
                zr = z[j]
                order = np.lexsort((np.arange(len(zr)), -zr.astype(np.float64)))[:k]
                check(row["topk_ids"] == order.tolist(), f"row {rid}: ids {row['topk_ids']} vs {order.tolist()}")
                if t["values"] == "f32":
                    check(close(row["topk_values"], zr[order]), f"row {rid}: logits")
                check(close(row["logz"], logsumexp(zr, 1.0)), f"row {rid}: logz {row['logz']} vs {logsumexp(zr, 1.0)}")
                for ti, T in enumerate(temps):
                    check(close(row["logz_temps"][ti], logsumexp(zr, T)), f"row {rid}: logz at T={T}")
                for f in feats:
                    want = outs[f["tensor"]][j].reshape(-1).astype(np.float64)
                    got = np.float64(row[f["column"]])
                    if f["encoding"] == "int8":
                        got = got * row[f["column"] + "_scale"]
                        tol = np.abs(want).max() / 127 / 2 + 1e-6
                    elif f["encoding"] == "f16":
                        tol = np.abs(want) * 2**-11 + 1e-7
                    else:
                        tol = 1e-5 * np.maximum(1, np.abs(want))
                    check(np.all(np.abs(got - want) <= tol), f"row {rid}: feature {f['name']}")
                src = corpus[rid]
                if m.get("labels"):
                    check(row["label"] == src[m["corpus"]["options"]["label"]], f"row {rid}: label")
                if m["row_keys"]["user_id"]:
                    check(row["user_id"] == src[m["corpus"]["options"]["id"]], f"row {rid}: user id")
                h = hashlib.sha256()
                for i in inputs:
                    v = np.asarray(src[mapping[i]], dtype=np.float32)
                    h.update(i.encode() + b"\0" + v.astype("<f4").tobytes() + len(v).to_bytes(8, "little"))
                check(row["input_hash"] == h.digest(), f"row {rid}: input hash")
    print(f"build oracle: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])))
