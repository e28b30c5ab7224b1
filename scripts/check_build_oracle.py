#!/usr/bin/env python3
"""Correctness oracle for logits-build: recompute a dataset with ONNX Runtime's Python API.

Runs the same ONNX model on the same corpus with the `onnxruntime` Python package (same
version as the library logits-build loads), batching exactly as the build did (rows cut per
shard from the shard's start, `batch_size` rows per run), and checks every row of the dataset:
top-k ids exact (descending logit, ties to the lower id), raw logits and logZ (T=1 and each
stored temperature) within 1e-5 relative, features within their encoding's error, labels, ids,
and the sha256-v1 input hash recomputed from FORMAT.md's definition.

For per-token datasets (text corpora) it tokenizes with the `tokenizers` package from the
same tokenizer.json, windows each document as FORMAT.md and the manifest say, pads each batch
as the build did, and checks every real token position.

Usage: check_build_oracle.py MODEL CORPUS DATASET [TOKENIZER]
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


def windows_of(tok, corpus_path, field, window, stride):
    """Token windows in row-id order: documents are non-empty lines (JSONL field or plain)."""
    out = []
    for line in open(corpus_path, encoding="utf-8"):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        text = json.loads(line)[field] if corpus_path.endswith((".jsonl", ".json", ".ndjson")) else line
        ids = tok.encode(text).ids
        n = len(ids)
        count = 0 if n == 0 else 1 if n <= window else -(-(n - window) // stride) + 1
        for w in range(count):
            out.append(ids[w * stride: w * stride + window])
    return out


def check_text(m, sess, corpus_path, ds, tok_path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    pad = tok.padding["pad_id"] if tok.padding else 0
    tok.no_padding()
    tok.no_truncation()
    opts = m["corpus"]["options"]
    wins = windows_of(tok, corpus_path, opts["field"], opts["window"], opts["stride"])
    t = m["targets"]
    k = t["topk"]["fixed"]["k"]
    temps = t.get("temperatures", [])
    per, bs = m["build"]["rows_per_shard"], m["build"]["batch_size"]
    rows = {}
    for s in m["shards"]:
        for r in pq.read_table(ds / s["path"]).to_pylist():
            rows[r["row_id"]] = r
    check(len(rows) == len(wins) == m["corpus"]["rows"], f"window count {len(rows)} {len(wins)} {m['corpus']['rows']}")
    ids_name = m["inputs"][0]["name"] if m["inputs"] else "input_ids"
    names_in = [i.name for i in sess.get_inputs()]
    for start in range(0, len(wins), per):
        end = min(start + per, len(wins))
        for b0 in range(start, end, bs):
            batch = wins[b0:min(b0 + bs, end)]
            L = max(len(w) for w in batch)
            ids = np.full((len(batch), L), pad, dtype=np.int64)
            mask = np.zeros((len(batch), L), dtype=np.int64)
            for j, w in enumerate(batch):
                ids[j, :len(w)] = w
                mask[j, :len(w)] = 1
            feed = {ids_name: ids}
            if "attention_mask" in names_in:
                feed["attention_mask"] = mask
            names = [t["output"]] + [f["tensor"] for f in m["features"]]
            outs = dict(zip(names, sess.run(names, feed)))
            z = outs[t["output"]].astype(np.float32)
            for j, w in enumerate(batch):
                rid = b0 + j
                row = rows.get(rid)
                if row is None:
                    check(False, f"row {rid} missing")
                    continue
                check(row["in_" + ids_name] == w, f"row {rid}: stored token ids")
                check(len(row["logz"]) == len(w), f"row {rid}: positions")
                for p in range(len(w)):
                    zr = z[j, p]
                    order = np.lexsort((np.arange(len(zr)), -zr.astype(np.float64)))[:k]
                    check(row["topk_ids"][p] == order.tolist(), f"row {rid} pos {p}: ids")
                    if t["values"] == "f32":
                        check(close(row["topk_values"][p], zr[order]), f"row {rid} pos {p}: logits")
                    check(close(row["logz"][p], logsumexp(zr, 1.0)), f"row {rid} pos {p}: logz")
                    for ti, T in enumerate(temps):
                        check(close(row["logz_temps"][p][ti], logsumexp(zr, T)), f"row {rid} pos {p}: logz at T={T}")
                    if t.get("sampled"):
                        check(sum(row["sample_counts"][p]) == t["sampled"]["draws"], f"row {rid} pos {p}: sample counts")
                for f in m["features"]:
                    full = outs[f["tensor"]][j, :len(w)].astype(np.float64)
                    if f["pooling"] == "mean":
                        want = full.mean(axis=0)
                    elif f["pooling"] == "first":
                        want = full[0]
                    elif f["pooling"] == "last":
                        want = full[-1]
                    else:
                        want = full.reshape(-1)
                    got = np.float64(np.concatenate([np.ravel(x) for x in row[f["column"]]]) if f["granularity"] == "position" else row[f["column"]])
                    tol = np.abs(want) * 2**-11 + 1e-6 if f["encoding"] == "f16" else 1e-5 * np.maximum(1, np.abs(want))
                    check(got.shape == want.reshape(-1).shape and np.all(np.abs(got - want.reshape(-1)) <= tol), f"row {rid}: feature {f['name']}")
                h = hashlib.sha256(ids_name.encode() + b"\0" + np.asarray(w, dtype="<u4").tobytes() + len(w).to_bytes(8, "little"))
                check(row["input_hash"] == h.digest(), f"row {rid}: input hash")


def main(model_path, corpus_path, ds, tok_path=None):
    m = json.loads((ds / "manifest.json").read_text())
    t = m["targets"]
    feats = m["features"]
    model = onnx.load(model_path)
    have = {o.name for o in model.graph.output}
    for f in feats:
        if f["tensor"] not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(f["tensor"]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    if m["corpus"]["options"].get("kind") == "text":
        if not tok_path:
            sys.exit("a text dataset needs the TOKENIZER argument")
        check_text(m, sess, corpus_path, ds, tok_path)
        print(f"oracle: {passed} passed, {failed} failed")
        return 1 if failed else 0
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
    print(f"oracle: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), *sys.argv[4:]))
