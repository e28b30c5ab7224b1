#!/usr/bin/env python3
"""Makes the trained language-model teacher fixture: a small GPT-2 (fixtures/gpt2/).

- Text: real English technical prose available offline: the docstrings (module, class,
  function) of the Python standard library shipped with CPython and of NumPy (pinned in
  scripts/requirements-lm.txt), read with `ast` (nothing is imported or executed), one
  document per docstring, deduplicated, shuffled with a fixed seed and split 95/5 into
  `train.jsonl` and `holdout.jsonl` (field `text`).
- Tokenizer: byte-level BPE, vocabulary 8,192, `<pad>`=0 / `<bos>`=1 / `<eos>`=2, trained with
  the `tokenizers` package on the training split; a template post-processor adds
  `<bos> ... <eos>` (the same conventions as the tiny fixture).
- Model: GPT-2 (Radford et al. 2019) written out in PyTorch: token + learned position
  embeddings, pre-LayerNorm blocks of causal multi-head self-attention and a 4x GELU (tanh)
  MLP, final LayerNorm, head tied to the token embedding. 3 layers, width 128, 4 heads,
  context 128. Trained with AdamW (warm-up, cosine decay) on 128-token windows of the
  training split until the time budget or the step budget runs out.
- Export: ONNX (opset 17) with inputs `input_ids`, `attention_mask` [batch, sequence] int64 and
  outputs `logits` [batch, sequence, 8192] and `hidden` [batch, sequence, 128] (the final
  LayerNorm output, a feature); padded keys are masked. Checked against PyTorch through
  ONNX Runtime (max |difference| recorded).

Writes FIXTURES.json with sha256 of every file, the parameter count, training time and the
held-out perplexity next to the vocabulary size (a uniform guess has perplexity 8,192).

Usage: PY=$(LOGITS_VENV=.cache/venv-lm scripts/pyenv.sh scripts/requirements-lm.txt)
       $PY scripts/make_lm_fixture.py [--minutes 25] [--steps 4000] [--vocab 8192 --out DIR --chars 4000000]
"""
import ast
import hashlib
import json
import math
import pathlib
import sys
import sysconfig
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fixture_text import train_bpe, write_jsonl  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "gpt2"
SEED = 11
VOCAB = 8192
CTX = 128
DIM = 128
LAYERS = 3
HEADS = 4
MAX_CHARS = 4_000_000


def docstrings(root: pathlib.Path, skip=("test", "tests", "idlelib", "lib2to3", "turtledemo",
                                          "site-packages", "_vendor")):
    out = []
    for f in sorted(root.rglob("*.py")):
        if any(p in skip for p in f.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) >= 80:
                    out.append(d.strip())
    return out


def documents():
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    docs = docstrings(stdlib) + docstrings(pathlib.Path(np.__file__).parent)
    if MAX_CHARS > 4_000_000:
        # Benchmark teachers with larger vocabularies: PyTorch's docstrings too (the fixture,
        # made with the default, stays as it was).
        docs += docstrings(pathlib.Path(torch.__file__).parent)
    seen, uniq = set(), []
    for d in docs:
        if d not in seen:
            seen.add(d)
            uniq.append(d)
    rng = np.random.default_rng(SEED)
    uniq = [uniq[i] for i in rng.permutation(len(uniq))]
    kept, total = [], 0
    for d in uniq:
        if total + len(d) > MAX_CHARS:
            break
        kept.append(d)
        total += len(d)
    cut = int(len(kept) * 0.95)
    return kept[:cut], kept[cut:]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(DIM)
        self.c_attn = nn.Linear(DIM, 3 * DIM)
        self.c_proj = nn.Linear(DIM, DIM)
        self.ln_2 = nn.LayerNorm(DIM)
        self.c_fc = nn.Linear(DIM, 4 * DIM)
        self.c_proj2 = nn.Linear(4 * DIM, DIM)

    def forward(self, x, bias):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(DIM, dim=2)
        hd = DIM // HEADS
        q = q.view(b, t, HEADS, hd).transpose(1, 2)
        k = k.view(b, t, HEADS, hd).transpose(1, 2)
        v = v.view(b, t, HEADS, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd)) + bias
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.c_proj(y)
        x = x + self.c_proj2(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT2(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, DIM)
        self.wpe = nn.Embedding(CTX, DIM)
        self.h = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.ln_f = nn.LayerNorm(DIM)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        # GPT-2's initialisation: N(0, 0.02) weights, zero biases.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
        x = self.wte(input_ids) + self.wpe(pos)
        causal = torch.ones(t, t, device=input_ids.device).tril().view(1, 1, t, t)
        keys = attention_mask.to(x.dtype).view(b, 1, 1, t)
        bias = (1.0 - causal * keys) * -1e9
        for blk in self.h:
            x = blk(x, bias)
        hidden = self.ln_f(x)
        logits = hidden @ self.wte.weight.t()
        return logits, hidden


def windows(ids_list, ctx):
    """Concatenates documents (each <bos> ... <eos>) and cuts 128-token training windows."""
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids_list])
    n = (len(flat) - 1) // ctx
    return torch.from_numpy(flat[: n * ctx + 1].copy()), n


def evaluate(model, stream, n, ctx, batch=32):
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, n, batch):
            idx = torch.arange(s, min(s + batch, n))
            x = torch.stack([stream[i * ctx:(i + 1) * ctx] for i in idx])
            y = torch.stack([stream[i * ctx + 1:(i + 1) * ctx + 1] for i in idx])
            logits, _ = model(x, torch.ones_like(x))
            total += F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    model.train()
    return math.exp(total / count)


def main():
    global VOCAB, OUT, MAX_CHARS
    args = sys.argv
    # --vocab N --out DIR make a benchmark teacher elsewhere (not the committed fixture), e.g.
    # the >= 32,000-vocabulary real-text teacher of the compact-targets benchmark.
    VOCAB = int(args[args.index("--vocab") + 1]) if "--vocab" in args else VOCAB
    OUT = pathlib.Path(args[args.index("--out") + 1]) if "--out" in args else OUT
    # A larger vocabulary needs more text to learn its merges (the standard library's and NumPy's
    # docstrings give ~30,600; beyond 4 M characters PyTorch's are added).
    MAX_CHARS = int(args[args.index("--chars") + 1]) if "--chars" in args else MAX_CHARS
    minutes = float(args[args.index("--minutes") + 1]) if "--minutes" in args else 25.0
    max_steps = int(args[args.index("--steps") + 1]) if "--steps" in args else 4000
    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    OUT.mkdir(parents=True, exist_ok=True)
    train_docs, hold_docs = documents()
    write_jsonl(OUT / "train.jsonl", train_docs)
    write_jsonl(OUT / "holdout.jsonl", hold_docs)
    tok = train_bpe(train_docs, VOCAB)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    enc = lambda docs: [e.ids for e in tok.encode_batch(docs)]  # no padding yet: real tokens
    train_stream, n_train = windows(enc(train_docs), CTX)
    hold_stream, n_hold = windows(enc(hold_docs), CTX)
    tok.enable_padding(pad_id=0, pad_token="<pad>")
    tok.save(str(OUT / "tokenizer.json"))
    print(f"corpus: {len(train_docs)} train / {len(hold_docs)} held-out documents, "
          f"{len(train_stream)} / {len(hold_stream)} tokens", flush=True)

    model = GPT2()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup, batch = 100, 32
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max_steps))))
    g = torch.Generator().manual_seed(SEED)
    start = time.time()
    step = 0
    # Early stopping on a slice of the held-out windows: the corpus is small for the model,
    # so the best held-out state is kept, not the last.
    best = (float("inf"), None, 0)
    while step < max_steps and time.time() - start < minutes * 60:
        idx = torch.randint(0, n_train, (batch,), generator=g)
        x = torch.stack([train_stream[i * CTX:(i + 1) * CTX] for i in idx])
        y = torch.stack([train_stream[i * CTX + 1:(i + 1) * CTX + 1] for i in idx])
        logits, _ = model(x, torch.ones_like(x))
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
        if step % 250 == 0:
            ppl = evaluate(model, hold_stream, min(n_hold, 96), CTX)
            print(f"  held-out perplexity (96 windows) {ppl:.1f}", flush=True)
            if ppl < best[0]:
                best = (ppl, {k: v.clone() for k, v in model.state_dict().items()}, step)
    train_secs = time.time() - start
    final = evaluate(model, hold_stream, min(n_hold, 96), CTX)
    if best[1] is not None and best[0] < final:
        model.load_state_dict(best[1])
        print(f"kept the state of step {best[2]}", flush=True)
    kept_step = best[2] if best[1] is not None and best[0] < final else step
    ppl_hold = evaluate(model, hold_stream, n_hold, CTX)
    ppl_train = evaluate(model, train_stream, min(n_train, 200), CTX)
    print(f"held-out perplexity {ppl_hold:.1f} (vocabulary {VOCAB}); train {ppl_train:.1f}", flush=True)

    model.eval()
    ex_ids = torch.randint(3, VOCAB, (2, 16), generator=g)
    ex_mask = torch.ones_like(ex_ids)
    path = OUT / "gpt2_teacher.onnx"
    torch.onnx.export(
        model, (ex_ids, ex_mask), str(path), input_names=["input_ids", "attention_mask"],
        output_names=["logits", "hidden"], opset_version=17, dynamo=False,
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                      "attention_mask": {0: "batch", 1: "sequence"},
                      "logits": {0: "batch", 1: "sequence"}, "hidden": {0: "batch", 1: "sequence"}})
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path))
    x = torch.stack([hold_stream[i * CTX:(i + 1) * CTX] for i in range(4)])
    mask = torch.ones_like(x)
    mask[1, 100:] = 0  # a padded row: positions before the padding must not change
    with torch.no_grad():
        want, _ = model(x, mask)
    got = sess.run(["logits"], {"input_ids": x.numpy(), "attention_mask": mask.numpy()})[0]
    diff = float(np.abs(got - want.numpy()).max())
    with torch.no_grad():
        unpadded, _ = model(x[1:2, :100], torch.ones(1, 100, dtype=torch.int64))
    pad_diff = float((want[1, :100] - unpadded[0]).abs().max())
    print(f"ONNX Runtime vs PyTorch: max |difference| {diff:.2e}; padding leak {pad_diff:.2e}", flush=True)
    assert diff < 1e-3 and pad_diff < 1e-4

    files = ["gpt2_teacher.onnx", "tokenizer.json", "train.jsonl", "holdout.jsonl"]
    info = {
        "made_by": "PY=$(LOGITS_VENV=.cache/venv-lm scripts/pyenv.sh scripts/requirements-lm.txt); "
                   f"$PY scripts/make_lm_fixture.py --minutes {minutes:g} --steps {max_steps}",
        "text": "docstrings of the CPython standard library and of NumPy (ast, not imported), "
                "deduplicated, seed %d, split 95/5" % SEED,
        "documents": {"train": len(train_docs), "holdout": len(hold_docs)},
        "tokens": {"train": int(len(train_stream)), "holdout": int(len(hold_stream))},
        "tokenizer": {"kind": "byte-level BPE", "vocab_size": VOCAB, "special": ["<pad>", "<bos>", "<eos>"]},
        "model": {"architecture": "GPT-2 (pre-LN, tied head, GELU tanh)", "layers": LAYERS,
                  "width": DIM, "heads": HEADS, "context": CTX, "parameters": int(params),
                  "outputs": {"logits": ["batch", "sequence", VOCAB], "hidden": ["batch", "sequence", DIM]}},
        "training": {"steps": step, "kept_step": kept_step, "batch": f"{batch} x {CTX} tokens", "seconds": round(train_secs),
                     "optimizer": "AdamW lr 3e-3, betas (0.9, 0.95), wd 0.1, warm-up 100, cosine",
                     "threads": torch.get_num_threads()},
        "perplexity": {"holdout": round(ppl_hold, 2), "train": round(ppl_train, 2), "uniform": VOCAB},
        "onnx_check": {"max_abs_diff_vs_torch": diff, "padding_leak": pad_diff},
        "files": {f: {"sha256": hashlib.sha256((OUT / f).read_bytes()).hexdigest(),
                      "bytes": (OUT / f).stat().st_size} for f in files},
    }
    (OUT / "FIXTURES.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    sys.exit(main())
