#!/usr/bin/env python3
"""Checks the `logits` Python package (python/, installed by `pip install ./python`).

Against independent oracles, on datasets the real build wrote:
- what `logits.open(...).batches()` gives (ids, decoded logits, logZ at every stored
  temperature, exact tail, labels, features, inputs, sampled targets) against the shards read
  with pyarrow and decoded by FORMAT.md's reference snippet (the Python decoder of the
  format's contract, not the Rust one the package wraps);
- splits (train / test by --holdout-from) and parts (each shard in exactly one part);
- `logits.torch.DistillationDataset` through a DataLoader with 2 workers (every row once);
- `logits.torch.kd_loss` / `sampled_kd_loss` against fixtures/golden/kd_response.json (the
  NumPy reference with complex-step gradients that the Rust losses are checked against):
  losses to 1e-9 relative, autograd gradients to 1e-6 of the largest entry;
- errors: a missing directory, an unstored temperature, a damaged shard.

Usage: check_python_package.py DATASET_DIR...   (each a dataset built by logits-build)
"""
import json
import math
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq

import logits

ROOT = pathlib.Path(__file__).resolve().parent.parent
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")


def reference_decoder():
    """FORMAT.md's Python snippet, executed as written there."""
    text = (ROOT / "schemas" / "FORMAT.md").read_text()
    start = text.index("```python\nimport numpy as np\n\ndef decode_values")
    code = text[start + len("```python\n"):text.index("```", start + 10)]
    ns = {}
    exec(code, ns)
    return ns["decode_values"], ns["teacher_logprobs"]


def oracle_rows(path):
    """Every row of every shard, by pyarrow, in row-id order."""
    m = json.loads((pathlib.Path(path) / "manifest.json").read_text())
    rows = []
    for s in m["shards"]:
        rows.extend(pq.read_table(pathlib.Path(path) / s["path"]).to_pylist())
    return m, rows


def check_dataset(path):
    decode_values, teacher_logprobs = reference_decoder()
    m, rows = oracle_rows(path)
    ds = logits.open(path)
    check(ds.num_rows == len(rows), f"{path}: rows {ds.num_rows} vs {len(rows)}")
    temps = ds.temperatures
    per_token = m["targets"]["granularity"] == "position"
    got = list(ds.batches(batch_size=37))
    check(sum(b.rows for b in got) == len(rows), f"{path}: rows streamed")
    r = 0
    worst = 0.0
    for b in got:
        for i in range(b.rows):
            want = rows[r]
            r += 1
            check(int(b.row_id[i]) == want["row_id"], f"{path}: row id {b.row_id[i]} vs {want['row_id']}")
            if b.label is not None:
                check(int(b.label[i]) == (-1 if want["label"] is None else want["label"]), f"{path}: label of row {want['row_id']}")
            p0, p1 = int(b.row_positions[i]), int(b.row_positions[i + 1])
            ids = want["topk_ids"] if per_token else [want["topk_ids"]]
            vals = want["topk_values"] if per_token else [want["topk_values"]]
            logz = want["logz"] if per_token else [want["logz"]]
            lzt = want.get("logz_temps") or ([] if per_token else None)
            lzt = lzt if per_token else [want.get("logz_temps") or []]
            tails = want.get("topk_logtail")
            tails = (tails if per_token else [tails]) if tails is not None else [None] * len(ids)
            check(p1 - p0 == len(ids), f"{path}: positions of row {want['row_id']}")
            for j in range(len(ids)):
                p = p0 + j
                n = int(b.topk_count[p])
                check(list(b.topk_ids[p, :n]) == list(ids[j]), f"{path}: ids of row {want['row_id']} position {j}")
                check(bool(np.all(b.topk_ids[p, n:] == 0)) and bool(np.all(np.isneginf(b.topk_logits[p, n:]))), f"{path}: padding")
                for t in temps:
                    lp_want, tail_want = teacher_logprobs(m, ids[j], vals[j], logz[j], (lzt[j] if lzt else []) or [], T=t, logtail=tails[j])
                    lp = b.log_probs(t)[p, :n]
                    err = max(abs(lp[q] - lp_want[ids[j][q]]) for q in range(n))
                    scale = max(1.0, float(np.abs(lp).max()))
                    worst = max(worst, err / scale)
                    check(err <= 1e-5 * scale, f"{path}: log-probs of row {want['row_id']} position {j} at T={t}: {err}")
                    check(abs(b.tail(t)[p] - tail_want) <= 1e-5, f"{path}: tail of row {want['row_id']} at T={t}: {b.tail(t)[p]} vs {tail_want}")
            if b.sampled_ids is not None:
                s_ids, s_counts = want["sample_ids"], want["sample_counts"]
                for j in range(len(s_ids)):
                    n = len(s_ids[j])
                    check(list(b.sampled_ids[p0 + j, :n]) == s_ids[j] and list(b.sampled_counts[p0 + j, :n]) == s_counts[j], f"{path}: sampled of row {want['row_id']}")
            for f in m.get("features", []):
                col = want[f["column"]]
                v = np.asarray(col, dtype=np.float32).reshape(-1, *f["shape"])
                got_f = b.features[f["name"]][p0:p1] if f["granularity"] == "position" and per_token else b.features[f["name"]][i:i + 1]
                check(np.allclose(got_f.reshape(v.shape), v, rtol=0, atol=1e-3 * max(1.0, float(np.abs(v).max(initial=0)))),
                      f"{path}: feature {f['name']} of row {want['row_id']}")
            for spec in m.get("inputs", []):
                got_in = b.inputs[spec["name"]]
                row_in = got_in[i]
                check(np.array_equal(np.asarray(row_in).reshape(-1), np.asarray(want[spec["column"]]).reshape(-1)),
                      f"{path}: input {spec['name']} of row {want['row_id']}")
    print(f"python: {path}: {len(rows)} rows, encoding {m['targets']['values']}, T={temps}: worst log-prob difference from FORMAT.md's decoder (relative to max(1, |log p|)) {worst:.2e}")

    # Rows one at a time: the same values as the batches.
    first = next(ds.rows())
    b0 = got[0]
    check(first["row_id"] == int(b0.row_id[0]) and np.array_equal(first["topk_ids"][0], b0.topk_ids[0, :b0.topk_count[0]])
          and all(np.array_equal(np.asarray(first["features"][k]).reshape(-1), np.asarray(
              b0.features[k][:1] if len(b0.features[k]) == b0.rows else b0.features[k][:int(b0.row_positions[1])]).reshape(-1))
              for k in b0.features), f"{path}: Dataset.rows")
    check(sum(1 for _ in ds.rows()) == len(rows), f"{path}: Dataset.rows count")
    # Parts: every shard in exactly one part, rows in order.
    for n in (2, 3):
        seen = sorted(int(x) for i in range(n) for b in ds.batches(50, part=(i, n)) for x in b.row_id)
        check(seen == [row["row_id"] for row in rows], f"{path}: parts of {n} cover every row once")
    # Splits.
    if ds.holdout_from is not None:
        tr = [int(x) for b in ds.batches(100, split="train") for x in b.row_id]
        te = [int(x) for b in ds.batches(100, split="test") for x in b.row_id]
        check(tr and te and max(tr) < ds.holdout_from <= min(te) and len(tr) + len(te) == len(rows), f"{path}: splits")
    # Shuffled: same rows, another order.
    sh = [int(x) for b in ds.batches(64, shuffle=7) for x in b.row_id]
    check(sorted(sh) == [row["row_id"] for row in rows] and sh != sorted(sh), f"{path}: shuffled stream")


def check_torch(path):
    import torch
    from logits.torch import DistillationDataset
    ds = logits.open(path)
    data = DistillationDataset(path, batch_size=40, temperature=ds.temperatures[-1])
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    ids = sorted(int(x) for b in loader for x in b["row_id"])
    check(len(ids) == ds.num_rows and len(set(ids)) == len(ids), f"{path}: DataLoader with 2 workers reads every row once ({len(ids)} of {ds.num_rows})")
    b = next(iter(data))
    check(b["teacher_logprobs"].dtype == torch.float64 and b["teacher_logprobs"].shape == b["topk_ids"].shape, f"{path}: tensor batch")
    try:
        DistillationDataset(path, temperature=3.0)
        check(False, f"{path}: an unstored temperature is refused")
    except ValueError as e:
        check("not stored" in str(e), f"{path}: unstored temperature message: {e}")


def check_losses():
    import torch
    from logits.torch import kd_loss, sampled_kd_loss
    g = json.loads((ROOT / "fixtures" / "golden" / "kd_response.json").read_text())
    worst_l = worst_g = 0.0
    for c in g["cases"]:
        s = torch.tensor([c["student_logits"]], dtype=torch.float64, requires_grad=True)
        div = c["divergence"]
        beta = 0.5
        if div.startswith("jsd:"):
            div, beta = "jsd", float(div.split(":")[1])
        loss = kd_loss(s, torch.tensor([c["ids"]]), torch.tensor([c["teacher_logprobs"]], dtype=torch.float64),
                       temperature=c["temperature"], divergence=div, topk=c["mode"], jsd_beta=beta)
        loss.backward()
        rel = abs(loss.item() - c["loss"]) / abs(c["loss"])
        want = np.array(c["grad"])
        gerr = np.abs(s.grad[0].numpy() - want).max() / np.abs(want).max()
        worst_l, worst_g = max(worst_l, rel), max(worst_g, gerr)
        check(rel <= 1e-9, f"kd_loss {c['divergence']} {c['mode']} T={c['temperature']}: {loss.item()} vs {c['loss']}")
        check(gerr <= 1e-6, f"kd_loss gradient {c['divergence']} {c['mode']}: {gerr}")
    # Batched: padding (-inf) and a mask give the mean of the single-position losses.
    cs = [c for c in g["cases"] if c["divergence"] == "forward_kl" and c["mode"] == "tail" and len(c["student_logits"]) == 50]
    k = max(len(c["ids"]) for c in cs)
    s = torch.tensor([c["student_logits"] for c in cs] + [cs[0]["student_logits"]], dtype=torch.float64)
    ids = torch.tensor([c["ids"] + [0] * (k - len(c["ids"])) for c in cs] + [[0] * k])
    lp = torch.tensor([c["teacher_logprobs"] + [-math.inf] * (k - len(c["ids"])) for c in cs] + [[-math.inf] * k], dtype=torch.float64)
    t = torch.tensor([c["temperature"] for c in cs])
    check(len(set(t.tolist())) == len(cs), "distinct temperatures in the batched check")
    for i, c in enumerate(cs):
        one = kd_loss(s[i:i + 1], ids[i:i + 1], lp[i:i + 1], temperature=c["temperature"])
        check(abs(one.item() - c["loss"]) <= 1e-9 * c["loss"], f"padded kd_loss: {one.item()} vs {c['loss']}")
    mask = torch.tensor([True] * len(cs) + [False])
    both = kd_loss(s[[0, 0]], ids[[0, len(cs)]], lp[[0, len(cs)]], temperature=cs[0]["temperature"], mask=mask[[0, len(cs)]])
    check(abs(both.item() - cs[0]["loss"]) <= 1e-9 * cs[0]["loss"], f"masked kd_loss: {both.item()} vs {cs[0]['loss']}")
    for c in g["sampled_cases"]:
        s1 = torch.tensor([c["student_logits"]], dtype=torch.float64, requires_grad=True)
        loss = sampled_kd_loss(s1, torch.tensor([c["ids"]]), torch.tensor([c["counts"]]), temperature=c["temperature"])
        loss.backward()
        want = np.array(c["grad"])
        check(abs(loss.item() - c["loss"]) <= 1e-9 * abs(c["loss"]), f"sampled_kd_loss: {loss.item()} vs {c['loss']}")
        check(np.abs(s1.grad[0].numpy() - want).max() <= 1e-6 * np.abs(want).max(), "sampled_kd_loss gradient")
    print(f"python: KD losses in torch against the NumPy reference: {len(g['cases']) + len(g['sampled_cases'])} cases, "
          f"worst relative loss difference {worst_l:.1e}, gradient {worst_g:.1e}")


def check_errors(path):
    try:
        logits.open("/nonexistent/dataset")
        check(False, "a missing dataset is refused")
    except RuntimeError as e:
        check("/nonexistent/dataset" in str(e), f"missing dataset message names the path: {e}")
    ds = logits.open(path)
    try:
        next(ds.batches()).log_probs(3.5)
        check(False, "an unstored temperature is refused")
    except ValueError as e:
        check("T=3.5 was not stored" in str(e), f"unstored temperature: {e}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "ds"
        shutil.copytree(path, copy)
        shard = sorted((copy / "shards").iterdir())[-1]
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        try:
            sum(b.rows for b in logits.open(str(copy)).batches())
            check(False, "a damaged shard is refused")
        except RuntimeError as e:
            check(shard.name in str(e) and "sha256" in str(e), f"damaged shard message names the file: {e}")


def main():
    for path in sys.argv[1:]:
        check_dataset(path)
        check_torch(path)
    check_losses()
    check_errors(sys.argv[1])
    print(f"python: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
