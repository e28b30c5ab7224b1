#!/usr/bin/env python3
"""The same GPT-2-style language-model student trained by plain PyTorch, as the oracle for
`logits-train`'s transformer student on per-token shards.

Reads a finished `logits-train train` run (its `config.toml` and `report.json`), the per-token
dataset it trained on and a held-out dataset (shards of text neither student trained on);
trains the same network in PyTorch with the same settings from the same stored targets; and
evaluates it on the held-out windows as `logits-train eval` does (top-1 agreement with the
teacher, KL(teacher‖student) at T = 1 over the kept ids plus the exact tail bucket, next-token
perplexity). Teacher log-probs are decoded by FORMAT.md's own Python snippet (pyarrow + numpy),
not by the Rust reader.

What PyTorch does, written the way a PyTorch user would: token + learned position embeddings,
pre-LayerNorm blocks of causal multi-head attention (`scaled_dot_product_attention`) and a
4x tanh-GELU MLP, a final LayerNorm, the head tied to the token embedding; GPT-2's
initialisation (N(0, 0.02) weights, zero biases); AdamW with decay on matrices only, linear
warm-up then cosine to `min_lr`, clipping by global norm; the loss `kd · T²·KL(p_T ‖ q_T)` over
the kept ids plus the tail bucket, averaged over positions, `+ ce ·` next-token cross-entropy
over positions whose next token is in the window (../shared/KD-REFERENCE.md).

Usage: PY=$(LOGITS_VENV=.cache/venv-zoo scripts/pyenv.sh scripts/requirements-zoo.txt)
       $PY scripts/lm_vs_torch.py RUN_DIR TRAIN_DS HOLDOUT_DS EVAL_REPORT [--seeds 1]
           [--first-seed 0] [--threads 2]
EVAL_REPORT: `logits-train eval HOLDOUT_DS --student RUN_DIR/student.safetensors --json` output.
Prints one JSON line: both students' held-out figures and training tokens/s (logits-train: real
tokens × steps / the run's train_seconds, including reading the shards; PyTorch: its training
loop on `--threads` threads over pre-decoded targets).
"""
import argparse
import json
import math
import pathlib
import time
import tomllib

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from format_snippet import teacher_logprobs_fn as spec_snippet  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent




def load(ds, temperature):
    """Windows (token ids) and, per position, the teacher's kept ids, log-probs at T and tail,
    as padded arrays: ids [P, k], logp [P, k] (-inf where fewer kept), tail [P]."""
    teacher_logprobs = spec_snippet()
    manifest = json.loads((ds / "manifest.json").read_text())
    rows = []
    for s in manifest["shards"]:
        rows.extend(pq.read_table(ds / s["path"]).to_pylist())
    rows.sort(key=lambda r: r["row_id"])
    col = [c for c in rows[0] if c.startswith("in_")][0]
    windows = [np.asarray(r[col], np.int64) for r in rows]
    k = manifest["targets"]["k"] if isinstance(manifest["targets"].get("k"), int) else max(
        len(p) for r in rows for p in r["topk_ids"])
    n = sum(len(w) for w in windows)
    ids = np.zeros((n, k), np.int64)
    logp = np.full((n, k), -np.inf, np.float32)
    tail = np.zeros(n, np.float32)
    p = 0
    for r in rows:
        temps = r.get("logz_temps") or [[]] * len(r["topk_ids"])
        for j in range(len(r["topk_ids"])):
            d, t = teacher_logprobs(manifest, r["topk_ids"][j], r["topk_values"][j], r["logz"][j],
                                    temps[j] or [], T=temperature)
            kk = len(d)
            ids[p, :kk] = list(d.keys())
            logp[p, :kk] = list(d.values())
            tail[p] = t
            p += 1
    assert p == n, f"{ds}: {p} target positions for {n} tokens"
    return manifest, windows, torch.as_tensor(ids), torch.as_tensor(logp), torch.as_tensor(tail)


class Block(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(d, eps=1e-5)
        self.attn = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.ln_2 = torch.nn.LayerNorm(d, eps=1e-5)
        self.fc = torch.nn.Linear(d, 4 * d)
        self.fc_out = torch.nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(o.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class Gpt(torch.nn.Module):
    def __init__(self, vocab, context, d, layers, heads):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, d)
        self.wpe = torch.nn.Embedding(context, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(d, eps=1e-5)
        for m in self.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.zeros_(m.bias)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(t))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.T


def kd_loss(logits, ids, logp, tail, t):
    """T²·mean over positions of KL(p‖q) over kept ids plus the tail bucket (float32)."""
    logq = torch.log_softmax(logits / t, dim=1).gather(1, ids)
    p = logp.exp()
    kept = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(1)
    q_tail = (1.0 - torch.where(p > 0, logq.exp(), torch.zeros_like(p)).sum(1)).clamp_min(1e-30)
    tail_kl = torch.where(tail > 0, tail * (tail.clamp_min(1e-30).log() - q_tail.log()),
                          torch.zeros_like(tail))
    return t * t * (kept + tail_kl).mean()


def batch_of(windows, offsets, idx):
    """Right-padded ids, the flat index of every real position, its target row, next tokens."""
    t = max(len(windows[i]) for i in idx)
    x = torch.zeros((len(idx), t), dtype=torch.long)
    flat, rows, nxt = [], [], []
    for b, i in enumerate(idx):
        w = windows[i]
        x[b, :len(w)] = torch.as_tensor(w)
        flat.extend(b * t + p for p in range(len(w)))
        rows.extend(range(offsets[i], offsets[i] + len(w)))
        nxt.extend(list(w[1:]) + [-1])
    return x, torch.as_tensor(flat), torch.as_tensor(rows), torch.as_tensor(nxt)


def lr_at(o, step, total):
    if step < o["warmup"]:
        return o["lr"] * (step + 1) / o["warmup"]
    frac = min((step - o["warmup"]) / max(total - o["warmup"], 1), 1.0)
    lo = o.get("min_lr", 0.0)
    return lo + 0.5 * (o["lr"] - lo) * (1 + math.cos(math.pi * frac))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=pathlib.Path)
    ap.add_argument("train", type=pathlib.Path)
    ap.add_argument("holdout", type=pathlib.Path)
    ap.add_argument("eval_report", type=pathlib.Path)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = tomllib.loads((a.run / "config.toml").read_text())
    lm, loss, o, data = cfg["lm"], cfg["loss"], cfg["optim"], cfg["data"]
    t = loss["temperature"]
    manifest, windows, ids, logp, tail = load(a.train, t)
    _, h_windows, h_ids, h_logp, h_tail = load(a.holdout, 1.0)
    vocab = manifest["targets"]["axis_size"]
    context = lm.get("context") or max(len(w) for w in windows)
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in windows])])
    h_offsets = np.concatenate([[0], np.cumsum([len(w) for w in h_windows])])
    bs = data["batch_size"]
    per_epoch = math.ceil(len(windows) / bs)
    total = data.get("steps") or per_epoch * data["epochs"]
    runs = []
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        torch.manual_seed(seed)
        net = Gpt(vocab, context, lm["dim"], lm["layers"], lm["heads"])
        decay = [p for p in net.parameters() if p.dim() >= 2]
        rest = [p for p in net.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
        rng = np.random.default_rng(seed)
        step, tokens = 0, 0
        start = time.perf_counter()
        while step < total:
            order = rng.permutation(len(windows))
            for b in range(per_epoch):
                x, flat, rows, nxt = batch_of(windows, offsets, order[b * bs:(b + 1) * bs])
                logits = net(x).reshape(-1, vocab)[flat]
                obj = loss["kd"] * kd_loss(logits, ids[rows], logp[rows], tail[rows], t)
                if loss["ce"] > 0:
                    keep = nxt >= 0
                    obj = obj + loss["ce"] * F.cross_entropy(logits[keep], nxt[keep])
                for g in opt.param_groups:
                    g["lr"] = lr_at(o, step, total)
                opt.zero_grad()
                obj.backward()
                if o.get("clip_norm"):
                    torch.nn.utils.clip_grad_norm_(net.parameters(), o["clip_norm"])
                opt.step()
                step += 1
                tokens += len(flat)
                if step >= total:
                    break
        tps = tokens / (time.perf_counter() - start)
        agree = kl = ce = 0.0
        n = nce = 0
        with torch.no_grad():
            for s in range(0, len(h_windows), 16):
                x, flat, rows, nxt = batch_of(h_windows, h_offsets, range(s, min(s + 16, len(h_windows))))
                logits = net(x).reshape(-1, vocab)[flat]
                top = h_ids[rows, 0]
                agree += float((logits.argmax(1) == top).sum())
                kl += float(kd_loss(logits, h_ids[rows], h_logp[rows], h_tail[rows], 1.0)) * len(flat)
                keep = nxt >= 0
                ce += float(F.cross_entropy(logits[keep], nxt[keep], reduction="sum"))
                n += len(flat)
                nce += int(keep.sum())
        runs.append({"seed": seed, "agreement": agree / n, "kl": kl / n, "perplexity": math.exp(ce / nce),
                     "tokens_per_s": tps})
    report = json.loads((a.run / "report.json").read_text())
    ev = json.loads(a.eval_report.read_text())["evaluation"]
    steps, secs = report.get("steps"), report.get("train_seconds")
    train_tokens = offsets[-1]
    # logits-train's tokens/s: its metrics lines' mean rate (real tokens, the training loop).
    rates = [json.loads(l).get("tokens_per_s") for l in (a.run / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r]
    print(json.dumps({
        "positions_evaluated": n,
        "steps": total,
        "logits_train": {"agreement": ev.get("agreement"), "kl": ev.get("kl"),
                         "perplexity": ev.get("perplexity"),
                         "tokens_per_s": float(np.mean(rates)) if rates else None,
                         "train_seconds": secs, "epoch_tokens": int(train_tokens), "steps": steps},
        "pytorch": runs,
        "pytorch_mean_agreement": float(np.mean([r["agreement"] for r in runs])),
        "pytorch_threads": a.threads,
    }))


if __name__ == "__main__":
    main()
