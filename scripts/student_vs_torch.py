#!/usr/bin/env python3
"""The same MLP student trained by plain PyTorch, as the oracle for `logits-train`'s MLP.

Reads a finished `logits-train train` run (its `config.toml` and `report.json`) and the dataset
it trained on, trains the same network in PyTorch with the same settings from the same stored
targets, and evaluates both on the same held-out rows. The teacher's log-probs are decoded by
FORMAT.md's own Python snippet (pyarrow + numpy), not by the Rust reader.

What PyTorch does, written the way a PyTorch user would: inputs standardised with the training
rows' mean and standard deviation (scikit-learn's StandardScaler convention: population std,
constant columns only centred) unless the run said `standardize = false`; nn.Linear + ReLU/GELU/
tanh (Glorot-uniform weights, zero biases, as the Rust student); AdamW with decay on matrices
only, half-cosine schedule per step, gradient clipping by global norm; the loss
`kd · T²·KL(p_T ‖ q_T)` over the kept ids plus the exact tail bucket, `+ ce · cross-entropy`
over the labelled rows of the batch, as ../shared/KD-REFERENCE.md defines them.

Usage: PY=$(LOGITS_VENV=.cache/venv-zoo scripts/pyenv.sh scripts/requirements-zoo.txt)
       $PY scripts/student_vs_torch.py RUN_DIR DATASET_DIR [--seeds 3]
Prints one JSON line: both students' held-out agreement with the teacher, accuracy and KL, and
training rows/s (logits-train: steps × batch / the run's train_seconds, which include reading the
shards and the standardisation pass; PyTorch: its training loop on one thread, as logits-train's
MLP runs, with a vectorised loss over pre-decoded targets).
"""
import argparse
import json
import math
import pathlib
import sys
import time
import tomllib

import numpy as np
import pyarrow.parquet as pq
import torch
from format_snippet import teacher_logprobs_fn as spec_snippet  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent




def load(ds, temperature):
    """Inputs, labels, teacher log-probs at T and at 1 (kept ids, tail) of every row, by row id."""
    teacher_logprobs = spec_snippet()
    manifest = json.loads((ds / "manifest.json").read_text())
    rows = []
    for s in manifest["shards"]:
        rows.extend(pq.read_table(ds / s["path"]).to_pylist())
    rows.sort(key=lambda r: r["row_id"])
    inp = [c for c in rows[0] if c.startswith("in_")]
    if len(inp) != 1:
        sys.exit(f"{ds}: expected one stored input column, found {inp}")
    x = np.array([np.asarray(r[inp[0]], dtype=np.float32).ravel() for r in rows])
    labels = np.array([-1 if r.get("label") is None else r["label"] for r in rows])
    targets = {}
    for T in {temperature, 1.0}:
        out = []
        for r in rows:
            lp, tail = teacher_logprobs(manifest, r["topk_ids"], r["topk_values"], r["logz"],
                                        r.get("logz_temps") or [], T=T,
                                        logtail=r.get("topk_logtail"))
            out.append((list(lp.keys()), np.array(list(lp.values())), tail))
        targets[T] = out
    ids = np.array([r["row_id"] for r in rows])
    return manifest, ids, x, labels, targets


def kd_loss(logits, batch_targets, t):
    """Mean over rows of T²·KL(p‖q) over the kept ids and the tail bucket."""
    logq = torch.log_softmax(logits / t, dim=1)
    total = 0.0
    for r, (ids, logp, tail) in enumerate(batch_targets):
        lq = logq[r, ids]
        p = torch.as_tensor(np.exp(logp), dtype=torch.float64)
        lp = torch.as_tensor(logp, dtype=torch.float64)
        kl = (p * (lp - lq.double())).sum()
        q_tail = (1.0 - lq.double().exp().sum()).clamp_min(1e-30)
        if tail > 0:
            kl = kl + tail * (math.log(tail) - q_tail.log())
        total = total + kl
    return t * t * total / len(batch_targets)


def dense_targets(batch_targets):
    """The kept ids, log-probs and tail of every row as padded tensors (what a PyTorch user
    would feed a vectorised loss: rows × k, with a mask for rows keeping fewer ids)."""
    k = max(len(ids) for ids, _, _ in batch_targets)
    n = len(batch_targets)
    ids = np.zeros((n, k), np.int64)
    logp = np.full((n, k), -np.inf, np.float32)
    tail = np.zeros(n, np.float32)
    for r, (i, lp, t) in enumerate(batch_targets):
        ids[r, :len(i)] = i
        logp[r, :len(i)] = lp
        tail[r] = t
    return torch.as_tensor(ids), torch.as_tensor(logp), torch.as_tensor(tail)


def kd_loss_dense(logits, ids, logp, tail, t):
    """kd_loss, vectorised in float32: T²·mean KL over kept ids plus the tail bucket."""
    logq = torch.log_softmax(logits / t, dim=1).gather(1, ids)
    p = logp.exp()
    kept = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(1)
    q_kept = torch.where(p > 0, logq.exp(), torch.zeros_like(p)).sum(1)
    q_tail = (1.0 - q_kept).clamp_min(1e-30)
    has = tail > 0
    tail_kl = torch.where(has, tail * (tail.clamp_min(1e-30).log() - q_tail.log()),
                          torch.zeros_like(tail))
    return t * t * (kept + tail_kl).mean()


def kl_eval(logits, targets):
    """Mean KL(teacher‖student) at T = 1 with the tail bucket (the report's `kl`)."""
    with torch.no_grad():
        return float(kd_loss(logits, targets, 1.0))


class Permute(torch.nn.Module):
    """[b, H, W, C] -> [b, C, H, W] (TensorFlow's layout to PyTorch's)."""

    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def train_torch(cfg, x_tr, y_tr, t_tr, classes, seed):
    torch.manual_seed(seed)
    model_cfg, loss, opt_cfg, data = cfg["model"], cfg["loss"], cfg["optim"], cfg["data"]
    act = {"relu": torch.nn.ReLU, "gelu": lambda: torch.nn.GELU(approximate="tanh"),
           "tanh": torch.nn.Tanh}[model_cfg.get("activation", "relu")]
    embed = model_cfg.get("embed")
    conv = model_cfg.get("conv") or []
    layers = []
    if conv and embed:
        # Embedded ids as dim channels of an n-long sequence.
        vocab, dim = embed

        class EmbedChannels(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.e = torch.nn.Embedding(vocab, dim)

            def forward(self, x):
                return self.e(x.long()).transpose(1, 2).flatten(1)

        layers.append(EmbedChannels())
        model_cfg = dict(model_cfg, image=[dim, 1, x_tr.shape[1]])
    if conv:
        # --conv: Conv2d(3, padding=1) -> ReLU -> MaxPool2d(2) blocks on images standardised per
        # channel (done on the data below), Glorot-uniform kernels, zero biases.
        c, h, w = model_cfg["image"]
        if model_cfg.get("channels_last"):
            layers += [torch.nn.Unflatten(1, (h, w, c)), Permute()]
        else:
            layers.append(torch.nn.Unflatten(1, (c, h, w)))
        for o in conv:
            kh, kw = (3 if h > 1 else 1), (3 if w > 1 else 1)
            k = torch.nn.Conv2d(c, o, (kh, kw), padding=(kh // 2, kw // 2))
            torch.nn.init.xavier_uniform_(k.weight)
            torch.nn.init.zeros_(k.bias)
            layers += [k, torch.nn.ReLU()]
            sy, sx = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
            if (sy, sx) != (1, 1):
                layers.append(torch.nn.MaxPool2d((sy, sx)))
                h, w = h // sy, w // sx
            c = o
        layers.append(torch.nn.Flatten())
        widths = [c * h * w] + list(model_cfg["hidden"]) + [classes]
    elif embed:
        # --embed V:D: an nn.Embedding per input id, concatenated (N(0, 1) init, as both).
        vocab, dim = embed

        class Embed(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.e = torch.nn.Embedding(vocab, dim)

            def forward(self, x):
                return self.e(x.long()).flatten(1)

        layers.append(Embed())
        widths = [x_tr.shape[1] * dim] + list(model_cfg["hidden"]) + [classes]
    else:
        widths = [x_tr.shape[1]] + list(model_cfg["hidden"]) + [classes]
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        lin = torch.nn.Linear(a, b)
        torch.nn.init.xavier_uniform_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(widths) - 2:
            if model_cfg.get("layer_norm"):
                layers.append(torch.nn.LayerNorm(b, eps=1e-5))
            layers.append(act())
    net = torch.nn.Sequential(*layers)
    decay = [p for p in net.parameters() if p.dim() >= 2]
    rest = [p for p in net.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": opt_cfg["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=opt_cfg["lr"], betas=(opt_cfg["beta1"], opt_cfg["beta2"]),
                            eps=opt_cfg["eps"])
    bs = data["batch_size"]
    per_epoch = math.ceil(len(x_tr) / bs)
    total = data.get("steps") or per_epoch * data["epochs"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(total, 1), 1.0))))
    t = loss["temperature"]
    xt = torch.as_tensor(x_tr)
    d_ids, d_logp, d_tail = dense_targets(t_tr)
    rng = np.random.default_rng(seed)
    step = 0
    start = time.perf_counter()
    while step < total:
        order = rng.permutation(len(x_tr))
        for b in range(per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            logits = net(xt[idx])
            ti = torch.as_tensor(idx)
            obj = loss["kd"] * kd_loss_dense(logits, d_ids[ti], d_logp[ti], d_tail[ti], t)
            lab = y_tr[idx]
            if loss["ce"] > 0 and (lab >= 0).any():
                keep = torch.as_tensor(lab >= 0)
                obj = obj + loss["ce"] * torch.nn.functional.cross_entropy(
                    logits[keep], torch.as_tensor(lab[lab >= 0]))
            opt.zero_grad()
            obj.backward()
            if opt_cfg.get("clip_norm"):
                torch.nn.utils.clip_grad_norm_(net.parameters(), opt_cfg["clip_norm"])
            opt.step()
            sched.step()
            step += 1
            if step >= total:
                break
    # Rows per second of the training loop (targets already decoded, as for logits-train).
    return net, step * bs / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=pathlib.Path)
    ap.add_argument("dataset", type=pathlib.Path)
    ap.add_argument("--seeds", type=int, default=3, help="PyTorch runs (different seeds)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = tomllib.loads((a.run / "config.toml").read_text())
    if cfg["model"].get("conv") and not cfg["model"].get("image") and not cfg["model"].get("embed"):
        # The image shape came from the dataset: the student file says which.
        raw = (a.run / "student.safetensors").read_bytes()
        header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
        cfg["model"]["image"] = json.loads(header["__metadata__"]["logits.student"])["conv"]["image"]
    report = json.loads((a.run / "report.json").read_text())
    t = cfg["loss"]["temperature"]
    manifest, ids, x, labels, targets = load(a.dataset, t)
    hold = cfg["data"].get("holdout_from", manifest["corpus"].get("holdout_from"))
    tr = ids < hold if hold is not None else np.ones(len(ids), bool)
    ho = ~tr if hold is not None else tr
    classes = manifest["targets"]["axis_size"]
    x_tr, x_ho = x[tr], x[ho]
    if cfg["model"].get("conv") and cfg["data"].get("standardize", True) and not cfg["model"].get("embed"):
        # Per channel: every pixel a sample of its channel.
        c = cfg["model"]["image"][0]
        if cfg["model"].get("channels_last"):
            def split(a):  # rows as [b, C, H*W] views of [b, H*W, C]
                return a.reshape(len(a), -1, c).transpose(0, 2, 1)

            def join(a):
                return a.transpose(0, 2, 1).reshape(len(a), -1)
        else:
            def split(a):
                return a.reshape(len(a), c, -1)

            def join(a):
                return a.reshape(len(a), -1)
        pix = split(x_tr).astype(np.float64)
        mean = pix.mean(axis=(0, 2))
        std = pix.std(axis=(0, 2))
        std[std < 1e-6] = 1.0

        def chan(a):
            return join((split(a) - mean[None, :, None]) / std[None, :, None]).astype(np.float32)
        x_tr, x_ho = chan(x_tr), chan(x_ho)
    elif cfg["data"].get("standardize", True) and not cfg["model"].get("embed"):
        mean = x_tr.astype(np.float64).mean(0)
        std = x_tr.astype(np.float64).std(0)
        std[std < 1e-6] = 1.0
        x_tr = ((x_tr - mean) / std).astype(np.float32)
        x_ho = ((x_ho - mean) / std).astype(np.float32)
    t_tr = [targets[t][i] for i in np.flatnonzero(tr)]
    t_ho = [targets[1.0][i] for i in np.flatnonzero(ho)]
    teacher_top1 = np.array([targets[1.0][i][0][int(np.argmax(targets[1.0][i][1]))]
                             for i in np.flatnonzero(ho)])
    runs = []
    for seed in range(a.seeds):
        net, rows_per_s = train_torch(cfg, x_tr, labels[tr], t_tr, classes, seed)
        with torch.no_grad():
            logits = net(torch.as_tensor(x_ho))
        pred = logits.argmax(1).numpy()
        lab = labels[ho]
        runs.append({
            "agreement": float((pred == teacher_top1).mean()),
            "accuracy": float((pred[lab >= 0] == lab[lab >= 0]).mean()) if (lab >= 0).any() else None,
            "kl": kl_eval(logits, t_ho),
            "rows_per_s": rows_per_s,
        })
    e = report["evaluation"]
    steps, secs = report.get("steps"), report.get("train_seconds")
    ours = steps * cfg["data"]["batch_size"] / secs if steps and secs else None
    print(json.dumps({
        "rows_evaluated": int(ho.sum()),
        "standardize": cfg["data"].get("standardize", True) and not cfg["model"].get("embed"),
        "embed": cfg["model"].get("embed"),
        "conv": cfg["model"].get("conv"),
        "logits_train": {"agreement": e.get("agreement"), "accuracy": e.get("accuracy"), "kl": e.get("kl"),
                         "rows_per_s": ours},
        "pytorch": runs,
        "pytorch_mean_agreement": float(np.mean([r["agreement"] for r in runs])),
    }))


if __name__ == "__main__":
    main()
