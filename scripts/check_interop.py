#!/usr/bin/env python3
"""Interoperability check: datasets written by the Rust library, read by third-party clients.

Reads the datasets that `cargo run -p logits-format --example write_interop -- DIR` wrote,
with pyarrow and with DuckDB's Python package (no logits code), and checks every value against
DIR/expected.json (the rows as handed to the writer, before storage encoding). Also validates
each manifest against schemas/manifest-v1.schema.json, and runs the Python snippet of
schemas/FORMAT.md that recovers teacher log-probs and tail mass, so the spec's own code is
tested.

Usage: check_interop.py DIR      (exit 0 when every check passes)
"""
import hashlib
import json
import math
import pathlib
import sys

import duckdb
import jsonschema
import numpy as np
import pyarrow.parquet as pq
from format_snippet import teacher_logprobs_fn as spec_snippet  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}", file=sys.stderr)




def value_tolerance(enc, logp, shift=0.0):
    """Largest decoding error of a T=1 log-prob under each encoding (FORMAT.md, Encodings);
    `shift` bounds the renormalisation to the exact tail (int8; f16/bf16 from format 1.1)."""
    return {
        "f32": 1e-5 * max(1.0, abs(logp)),
        "f16": abs(logp) * 2**-11 + shift + 1e-5,
        "bf16": abs(logp) * 2**-8 + shift + 1e-5,
        "int8": (abs(logp) + 1 / 32) * math.expm1(1 / 48) + shift + 1e-5,
    }[enc]


def main(out):
    teacher_logprobs = spec_snippet()
    schema = json.loads((ROOT / "schemas" / "manifest-v1.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    expected_all = json.loads((out / "expected.json").read_text())
    for name, expected in expected_all.items():
        ddir = out / name
        manifest = json.loads((ddir / "manifest.json").read_text())
        errors = [e.message for e in validator.iter_errors(manifest)]
        check(not errors, f"{name}: manifest fits the JSON schema: {errors[:3]}")
        for bad, why in [({"format_version": "2.0"}, "major 2"),
                         ({"shards": [dict(manifest["shards"][0], path="../x.parquet")]}, "'..' path"),
                         ({"shards": [dict(manifest["shards"][0], path="/etc/x")]}, "absolute path")]:
            check(not validator.is_valid(dict(manifest, **bad)), f"{name}: schema refuses {why}")
        t = manifest["targets"]
        enc, per_pos, temps = t["values"], t["granularity"] == "position", t.get("temperatures", [])
        files = [ddir / s["path"] for s in manifest["shards"]]
        for s, f in zip(manifest["shards"], files):
            check(hashlib.sha256(f.read_bytes()).hexdigest() == s["sha256"], f"{f}: sha256")
            kv = pq.ParquetFile(f).metadata.metadata
            check(kv[b"logits.dataset_id"].decode() == manifest["dataset_id"], f"{f}: dataset id")
            check(kv[b"logits.format_version"].decode() == manifest["format_version"], f"{f}: version")
            # The shard decodes alone: its metadata repeats the manifest's targets, inputs and
            # features.
            for key in ("targets", "inputs", "features"):
                if key in manifest and (key != "targets" or manifest[key] is not None):
                    check(json.loads(kv[f"logits.{key}".encode()]) == manifest[key], f"{f}: logits.{key} metadata")

        # --- pyarrow ---
        rows = []
        for f in files:
            rows.extend(pq.read_table(f).to_pylist())
        rows.sort(key=lambda r: r["row_id"])
        want = expected["rows"]
        check(len(rows) == len(want) == manifest["totals"]["rows"], f"{name}: row count")
        for got, exp in zip(rows, want):
            rid = exp["row_id"]
            check(got["row_id"] == rid, f"{name}: row id {rid}")
            check(got["user_id"] == exp["user_id"], f"{name} row {rid}: user_id")
            check(got["input_hash"].hex() == exp["input_hash"], f"{name} row {rid}: input_hash")
            check(got["label"] == exp["label"], f"{name} row {rid}: label")
            inp = [c for c in got if c.startswith("in_")][0]
            check(np.array_equal(np.float32(got[inp]), np.float32(exp["input"])), f"{name} row {rid}: input")
            wrap = (lambda c: got[c]) if per_pos else (lambda c: [got[c]])
            ids, vals, logz = wrap("topk_ids"), wrap("topk_values"), wrap("logz")
            # int8 always, f16/bf16 from format 1.1 (targets.exact_tail) carry the exact tail.
            logtails = wrap("topk_logtail") if "topk_logtail" in got else [None] * len(logz)
            ltemps = wrap("logz_temps") if temps else [[]] * len(logz)
            check(len(logz) == len(exp["positions"]), f"{name} row {rid}: positions")
            for p, e in enumerate(exp["positions"]):
                check(ids[p] == e["ids"], f"{name} row {rid} pos {p}: ids")
                check(np.float32(logz[p]) == np.float32(e["logz"]), f"{name} row {rid} pos {p}: logz")
                check(np.array_equal(np.float32(ltemps[p]), np.float32(e["logz_temps"])), f"{name} row {rid} pos {p}: logz_temps")
                if enc == "f32":
                    check(np.array_equal(np.float32(vals[p]), np.float32(e["logits"])), f"{name} row {rid} pos {p}: raw logits")
                z = np.float64(np.float32(e["logits"]))
                for ti, T in enumerate([1.0] + temps):
                    lz = e["logz"] if T == 1.0 else e["logz_temps"][ti - 1]
                    exact = z / T - np.float64(np.float32(lz))
                    logp, tail = teacher_logprobs(manifest, ids[p], vals[p], logz[p], ltemps[p], T=T, logtail=logtails[p])
                    # An error d in a decoded logit is an error d/T in log p_T; the T=1 log-prob
                    # l1 = z - logz is what the reduced encodings store.
                    l1 = z - np.float64(np.float32(e["logz"]))
                    p1 = np.exp(l1)
                    kept1 = p1.sum()
                    # Renormalisation moves every entry by at most the kept mass's relative error.
                    shift = 2 * (sum(q * value_tolerance(enc, x) for q, x in zip(p1, l1)) + (1 - kept1) * 0.01) / max(kept1, 1e-3)
                    tol = np.array([value_tolerance(enc, x, shift) / T for x in l1])
                    err = np.array([abs(logp[i] - x) for i, x in zip(e["ids"], exact)])
                    check(np.all(err <= tol), f"{name} row {rid} pos {p} T={T}: log-prob error {err.max()} beyond tolerance")
                    # The tail moves by at most sum p_i (exp(tol_i) - 1).
                    exact_tail = max(0.0, 1.0 - float(np.exp(exact).sum()))
                    tail_tol = float((np.exp(exact) * np.expm1(tol)).sum()) + 1e-6
                    check(abs(tail - exact_tail) <= tail_tol, f"{name} row {rid} pos {p} T={T}: tail {tail} vs {exact_tail} (tol {tail_tol})")
                if "sample_ids" in e:
                    check(wrap("sample_ids")[p] == e["sample_ids"] and wrap("sample_counts")[p] == e["sample_counts"], f"{name} row {rid} pos {p}: samples")
            for fname, fexp in exp["features"].items():
                spec = [f for f in manifest["features"] if f["name"] == fname][0]
                col = wrap(spec["column"]) if spec["granularity"] == "position" else [got[spec["column"]]]
                flat = np.concatenate([np.float64(c) for c in col])
                if spec["encoding"] == "int8":
                    sc = wrap(spec["column"] + "_scale") if spec["granularity"] == "position" else [got[spec["column"] + "_scale"]]
                    flat = np.concatenate([np.float64(c) * s for c, s in zip(col, sc)])
                    tol = np.repeat([s / 2 + 1e-6 for s in sc], len(col[0]))
                elif spec["encoding"] == "f16":
                    tol = np.abs(np.float64(fexp)) * 2**-11 + 1e-7
                else:
                    tol = 0.0
                check(np.all(np.abs(flat - np.float64(fexp)) <= tol), f"{name} row {rid}: feature {fname}")

        # --- DuckDB, plain SQL over the shard files ---
        flist = "[" + ", ".join(f"'{f}'" for f in files) + "]"
        con = duckdb.connect()
        n, = con.sql(f"SELECT count(*) FROM read_parquet({flist})").fetchall()[0]
        check(n == manifest["totals"]["rows"], f"{name}: duckdb count(*)")
        if per_pos:
            pos, ent = con.sql(f"SELECT sum(len(logz)), sum(len(flatten(topk_ids))) FROM read_parquet({flist})").fetchall()[0]
        else:
            pos, ent = con.sql(f"SELECT count(logz), sum(len(topk_ids)) FROM read_parquet({flist})").fetchall()[0]
        check(pos == manifest["totals"]["positions"] and ent == manifest["totals"]["entries"], f"{name}: duckdb positions/entries {pos} {ent}")
        res = con.sql(f"SELECT row_id, topk_ids, logz FROM read_parquet({flist}) ORDER BY row_id").fetchall()
        for (rid, ids, logz), exp in zip(res, want):
            e_ids = [p["ids"] for p in exp["positions"]]
            e_logz = [p["logz"] for p in exp["positions"]]
            if not per_pos:
                ids, logz = [ids], [logz]
            check(rid == exp["row_id"] and ids == e_ids, f"{name} row {rid}: duckdb ids")
            check(np.array_equal(np.float32(logz), np.float32(e_logz)), f"{name} row {rid}: duckdb logz")
        if not per_pos and enc == "f32":
            # Tail mass at T=1 in SQL alone: 1 - sum(exp(logit - logz)).
            tails = con.sql(f"SELECT row_id, 1 - list_sum(list_transform(topk_values, lambda x: exp(x - logz))) FROM read_parquet({flist}) ORDER BY row_id").fetchall()
            for (rid, tail), exp in zip(tails, want):
                e = exp["positions"][0]
                exact = 1 - math.fsum(math.exp(np.float32(x) - np.float32(e["logz"])) for x in e["logits"])
                check(abs(tail - exact) < 1e-5, f"{name} row {rid}: duckdb tail {tail} vs {exact}")
    print(f"interop: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(pathlib.Path(sys.argv[1])))
