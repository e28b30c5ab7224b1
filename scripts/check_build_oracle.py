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


TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
    "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(bool)": np.bool_,
}


LE = {"float32": "<f4", "float64": "<f8", "int64": "<i8", "int32": "<i4", "uint32": "<u4",
      "uint16": "<u2", "int8": "i1", "uint8": "u1"}


def rows_of(ds, m):
    rows = {}
    for s in m["shards"]:
        for r in pq.read_table(ds / s["path"]).to_pylist():
            rows[r["row_id"]] = r
    return rows


def check_targets(m, row, rid, z, positions):
    """The stored targets of one row against the teacher's values z: [C] for a per-example
    target (positions None), [T, C] for per-position ones (positions: the kept ones)."""
    t = m["targets"]
    k = t["topk"]["fixed"]["k"]
    temps = t.get("temperatures", [])
    cells = [(None, z)] if positions is None else [(i, z[p]) for i, p in enumerate(positions)]
    if positions is not None:
        check(len(row["logz"]) == len(positions), f"row {rid}: {len(row['logz'])} positions stored, {len(positions)} expected")
        if len(row["logz"]) != len(positions):
            return
    for i, zr in cells:
        at = (lambda v: v) if i is None else (lambda v, i=i: v[i])
        where = f"row {rid}" + ("" if i is None else f" pos {positions[i]}")
        order = np.lexsort((np.arange(len(zr)), -zr.astype(np.float64)))[:k]
        check(at(row["topk_ids"]) == order.tolist(), f"{where}: ids {at(row['topk_ids'])} vs {order.tolist()}")
        if t["values"] == "f32":
            check(close(at(row["topk_values"]), zr[order]), f"{where}: values")
        check(close(at(row["logz"]), logsumexp(zr, 1.0)), f"{where}: logz")
        for ti, T in enumerate(temps):
            check(close(at(row["logz_temps"])[ti], logsumexp(zr, T)), f"{where}: logz at T={T}")
        if t.get("sampled"):
            check(sum(at(row["sample_counts"])) == t["sampled"]["draws"], f"{where}: sample counts")


def check_feature(f, row, rid, want):
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    col = row[f["column"]]
    got = np.float64(np.concatenate([np.ravel(x) for x in col]) if f["granularity"] == "position" else np.ravel(col))
    if f["encoding"] == "int8":
        got = got * row[f["column"] + "_scale"]
        tol = np.abs(want).max() / 127 / 2 + 1e-6
    elif f["encoding"] == "f16":
        tol = np.abs(want) * 2**-11 + 1e-6
    else:
        tol = 1e-5 * np.maximum(1, np.abs(want))
    check(got.shape == want.shape and np.all(np.abs(got - want) <= tol), f"row {rid}: feature {f['name']}")


def logits_of(m, outs):
    z = outs[m["targets"]["output"]].astype(np.float32)
    if m["targets"]["output_is_probability"]:
        z = np.log(np.maximum(z, np.float32(1e-45)))
    return z


def check_text(m, sess, corpus_path, ds, tok_path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    pad = tok.padding["pad_id"] if tok.padding else 0
    tok.no_padding()
    tok.no_truncation()
    opts = m["corpus"]["options"]
    wins = windows_of(tok, corpus_path, opts["field"], opts["window"], opts["stride"])
    doc_ids = []
    if opts.get("id"):
        for line in open(corpus_path, encoding="utf-8"):
            if line.strip():
                d = json.loads(line)
                n = len(tok.encode(d[opts["field"]]).ids)
                count = 0 if n == 0 else 1 if n <= opts["window"] else -(-(n - opts["window"]) // opts["stride"]) + 1
                doc_ids += [str(d[opts["id"]])] * count
    t = m["targets"]
    per, bs = m["build"]["rows_per_shard"], m["build"]["batch_size"]
    rows = rows_of(ds, m)
    check(len(rows) == len(wins) == m["corpus"]["rows"], f"window count {len(rows)} {len(wins)} {m['corpus']['rows']}")
    ids_name = m["inputs"][0]["name"] if m["inputs"] else "input_ids"
    types = {i.name: TYPES[i.type] for i in sess.get_inputs()}
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
            if "attention_mask" in types:
                feed["attention_mask"] = mask
            if "position_ids" in types:
                feed["position_ids"] = np.tile(np.arange(L, dtype=np.int64), (len(batch), 1))
            if "token_type_ids" in types:
                feed["token_type_ids"] = np.zeros_like(ids)
            feed = {n: v.astype(types[n]) for n, v in feed.items()}
            names = [t["output"]] + [f["tensor"] for f in m["features"]]
            outs = dict(zip(names, sess.run(names, feed)))
            z = logits_of(m, outs)
            for j, w in enumerate(batch):
                rid = b0 + j
                row = rows.get(rid)
                if row is None:
                    check(False, f"row {rid} missing")
                    continue
                check(row["in_" + ids_name] == w, f"row {rid}: stored token ids")
                if t["granularity"] == "position":
                    check_targets(m, row, rid, z[j], list(range(len(w))))
                else:
                    check_targets(m, row, rid, z[j], None)
                for f in m["features"]:
                    full = outs[f["tensor"]][j, :len(w)].astype(np.float64)
                    want = {"mean": lambda: full.mean(axis=0), "first": lambda: full[0], "last": lambda: full[-1]}.get(f["pooling"], lambda: full)()
                    check_feature(f, row, rid, want)
                if doc_ids:
                    check(row["user_id"] == doc_ids[rid], f"row {rid}: user id {row['user_id']} vs {doc_ids[rid]}")
                h = hashlib.sha256(ids_name.encode() + b"\0" + np.asarray(w, dtype="<u4").tobytes() + len(w).to_bytes(8, "little"))
                check(row["input_hash"] == h.digest(), f"row {rid}: input hash")


def shaped(value, dims, declared):
    """A corpus row as the model's input: nested lists keep their shape; a flat list takes
    its declared shape, or the model's dims with at most one symbolic dim solved."""
    a = np.asarray(value)
    if a.ndim > 1:
        return a
    if declared:
        return a.reshape(declared)
    if len(dims) > 1:
        fixed = int(np.prod([d for d in dims if isinstance(d, int) and d > 0]))
        return a.reshape([d if isinstance(d, int) and d > 0 else a.size // fixed for d in dims])
    return a


def check_tensor(m, sess, corpus_path, ds):
    t = m["targets"]
    feats = m["features"]
    corpus = pq.read_table(corpus_path).to_pylist()
    opts = m["corpus"]["options"]
    mapping = dict(opts["inputs"])
    declared = opts.get("shapes", {})
    sin = {i.name: i for i in sess.get_inputs()}
    # Inputs the build made from input_ids (no corpus column): zeros, ones or positions.
    derived = opts.get("derived", {})
    inputs = [i["name"] for i in m["teacher"]["inputs"] if i["name"] not in derived]
    per, bs = m["build"]["rows_per_shard"], m["build"]["batch_size"]
    rows = rows_of(ds, m)
    check(len(rows) == len(corpus) == m["corpus"]["rows"], "row count")
    # The stored (and hashed) type of each input: as the manifest records it, else FORMAT.md's
    # rule (the cheapest exact type of the model's; floats as float32).
    rule = {"float32": "float32", "float64": "float32", "float16": "float32", "int64": "int64",
            "int32": "int32", "int16": "int32", "uint32": "uint32", "uint16": "uint16",
            "int8": "int8", "uint8": "uint8", "bool": "uint8"}
    dtypes = {i["name"]: i["dtype"] for i in m["teacher"]["inputs"]}
    stored = {i: next((s["stored"] for s in m["inputs"] if s["name"] == i), rule[dtypes[i]]) for i in inputs}
    columns = {s["name"]: s["column"] for s in m["inputs"]}
    mask_name = next((i for i in inputs if "mask" in i.lower() and TYPES[sin[i].type] not in (np.float32, np.float64, np.float16) and len(sin[i].shape) == 2), None)
    arrays = [{i: shaped(corpus[r][mapping[i]], sin[i].shape[1:], declared.get(i)) for i in inputs} for r in range(len(corpus))]
    for start in range(0, len(corpus), per):
        end = min(start + per, len(corpus))
        for b0 in range(start, end, bs):
            b1 = min(b0 + bs, end)
            # Rows of one shape together, as the build cuts a batch where shapes change.
            runs, cur = [], [b0]
            for r in range(b0 + 1, b1):
                if all(arrays[r][i].shape == arrays[r - 1][i].shape for i in inputs):
                    cur.append(r)
                else:
                    runs.append(cur)
                    cur = [r]
            runs.append(cur)
            for run in runs:
                feed = {i: np.stack([arrays[r][i] for r in run]).astype(TYPES[sin[i].type]) for i in inputs}
                for d, how in derived.items():
                    ids = feed["input_ids"]
                    v = {"zeros": np.zeros_like(ids), "ones": np.ones_like(ids),
                         "positions": np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))}[how]
                    feed[d] = v.astype(TYPES[sin[d].type])
                names = [t["output"]] + [f["tensor"] for f in feats]
                outs = dict(zip(names, sess.run(names, feed)))
                z = logits_of(m, outs)
                for j, rid in enumerate(run):
                    row = rows.get(rid)
                    if row is None:
                        check(False, f"row {rid} missing")
                        continue
                    if t["granularity"] == "position":
                        T = z.shape[1]
                        kept = list(range(T)) if mask_name is None else [p for p in range(T) if feed[mask_name][j].reshape(-1)[p] != 0]
                        check_targets(m, row, rid, z[j], kept)
                    else:
                        check_targets(m, row, rid, z[j], None)
                    for f in feats:
                        check_feature(f, row, rid, outs[f["tensor"]][j])
                    src = corpus[rid]
                    if m.get("labels"):
                        check(row["label"] == src[opts["label"]], f"row {rid}: label")
                    if m["row_keys"]["user_id"]:
                        check(row["user_id"] == str(src[opts["id"]]), f"row {rid}: user id")
                    h = hashlib.sha256()
                    for i in inputs:
                        v = np.asarray(src[mapping[i]]).reshape(-1)
                        b = v.astype(LE[stored[i]]).tobytes()
                        h.update(i.encode() + b"\0" + b + len(v).to_bytes(8, "little"))
                        if i in columns:
                            got = np.asarray(row[columns[i]]).reshape(-1)
                            check(np.array_equal(got, v.astype(LE[stored[i]])), f"row {rid}: stored input {i}")
                    check(row["input_hash"] == h.digest(), f"row {rid}: input hash")


def main(model_path, corpus_path, ds, tok_path=None):
    m = json.loads((ds / "manifest.json").read_text())
    model = onnx.load(model_path)
    have = {o.name for o in model.graph.output}
    # The target and features may be internal tensors: exposed as outputs, typed as ONNX's
    # own shape inference says.
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for name in [m["targets"]["output"]] + [f["tensor"] for f in m["features"]]:
        if name not in have:
            model.graph.output.append(inferred.get(name) or onnx.helper.make_empty_tensor_value_info(name))
            have.add(name)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    if m["corpus"]["options"].get("kind") == "text":
        if not tok_path:
            sys.exit("a text dataset needs the TOKENIZER argument")
        check_text(m, sess, corpus_path, ds, tok_path)
    else:
        check_tensor(m, sess, corpus_path, ds)
    print(f"oracle: {passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), *sys.argv[4:]))
