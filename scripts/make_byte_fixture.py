#!/usr/bin/env python3
"""Makes fixtures/bytes/: a byte-input teacher trained on real text, exported by torch.onnx, and
its distillation corpus — the situation of a user with a byte-level classifier (raw uint8
values in, a few hundred classes out) who wants a small MLP student.

The task is next-byte prediction over the GPT-2 fixture's real text (CPython and NumPy
docstrings, fixtures/gpt2/*.jsonl): 128 bytes of context in, 256 classes out. The teacher reads
`uint8 [batch, 128]`, casts to int64 inside the graph, embeds each byte (16 values), and runs a
2,048-192-192 MLP; trained here for a few epochs with Adam (seeded), exported with
`torch.onnx.export` (the TorchScript exporter, opset 17) and checked against PyTorch through ONNX
Runtime.

| file | what |
|---|---|
| byte_teacher.onnx | the teacher: `bytes` uint8 [b, 128] -> `logits` [b, 256] |
| train.parquet | 12,000 windows of the training text: `bytes` (list<uint8>, 128), `label` (next byte), `id` |
| holdout.parquet | 1,500 windows of the held-out text, the same columns (ids from 12,000 on) |

Usage: PY=$(LOGITS_VENV=.cache/venv-zoo scripts/pyenv.sh scripts/requirements-zoo.txt)
       $PY scripts/make_byte_fixture.py
"""
import hashlib
import json
import pathlib

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "bytes"
CONTEXT, EMBED, HIDDEN, CLASSES = 128, 16, 192, 256
TRAIN_ROWS, HOLDOUT_ROWS = 12_000, 1_500


def text_bytes(name):
    lines = (ROOT / "fixtures" / "gpt2" / name).read_text().splitlines()
    return np.frombuffer("\n\n".join(json.loads(l)["text"] for l in lines).encode(), np.uint8)


def windows(data, n, rng):
    starts = rng.integers(0, len(data) - CONTEXT - 1, size=n)
    x = np.stack([data[s:s + CONTEXT] for s in starts])
    y = data[starts + CONTEXT].astype(np.int64)
    return x, y


class ByteTeacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(256, EMBED)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(CONTEXT * EMBED, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, CLASSES))

    def forward(self, b):
        return self.mlp(self.embed(b.long()).flatten(1))


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    train_text, hold_text = text_bytes("train.jsonl"), text_bytes("holdout.jsonl")
    # The teacher learns from many windows; the corpus kept for distillation is a sample.
    xt, yt = windows(train_text, 300_000, rng)
    xh, yh = windows(hold_text, HOLDOUT_ROWS, rng)
    model = ByteTeacher()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt_t, yt_t = torch.as_tensor(xt), torch.as_tensor(yt)
    for epoch in range(4):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 512):
            idx = order[i:i + 512]
            loss = torch.nn.functional.cross_entropy(model(xt_t[idx]), yt_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(torch.as_tensor(xh)).argmax(1).numpy() == yh).mean()
        model.train()
        print(f"epoch {epoch}: loss {loss.item():.3f}, held-out next-byte accuracy {acc:.3f}")
    model.eval()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "byte_teacher.onnx"
    probe = torch.as_tensor(xh[:4])
    torch.onnx.export(model, (probe,), str(path), input_names=["bytes"], output_names=["logits"],
                      dynamic_axes={"bytes": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(torch.as_tensor(xh)).numpy()
    got = sess.run(None, {"bytes": xh})[0]
    diff = float(np.abs(got - want).max())
    assert diff < 1e-4, diff

    # The distillation corpus: windows of the training text the teacher saw, and held-out ones.
    xc, yc = windows(train_text, TRAIN_ROWS, rng)

    def write(name, x, y, first_id):
        table = pa.table({
            "bytes": pa.array(list(x), type=pa.list_(pa.uint8())),
            "label": pa.array(y, type=pa.int64()),
            "id": pa.array(np.arange(first_id, first_id + len(x)), type=pa.int64()),
        })
        pq.write_table(table, OUT / name, compression="zstd")

    write("train.parquet", xc, yc, 0)
    write("holdout.parquet", xh, yh, TRAIN_ROWS)
    files = ["byte_teacher.onnx", "train.parquet", "holdout.parquet"]
    (OUT / "FIXTURES.json").write_text(json.dumps({
        "made_by": "scripts/make_byte_fixture.py",
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "teacher_heldout_next_byte_accuracy": float(acc),
        "max_abs_diff_vs_pytorch": diff,
        "sha256": {f: hashlib.sha256((OUT / f).read_bytes()).hexdigest() for f in files},
    }, indent=2) + "\n")
    print(f"wrote {OUT}: teacher accuracy {acc:.3f}, ONNX vs PyTorch {diff:.2e}")


if __name__ == "__main__":
    main()
