#!/usr/bin/env python3
"""Makes the teacher-family matrix (fixtures/zoo/): small ONNX teachers as the real exporters
write them, with random weights (seeded), and a small corpus for each.

Each model is a family users bring, exported the way its users export it: `torch.onnx.export`
(the TorchScript exporter that optimum and most tutorials use, opset 17) for the PyTorch and
transformers models, `onnx.helper` for the graph that stands for jax2tf/tf2onnx output (int32
inputs, a softmax written as Exp -> ReduceSum -> Div with the max subtracted, no value_info
for any internal tensor). Nothing is downloaded: transformers models are built from a config.

| file | family | input | output |
|---|---|---|---|
| cnn.onnx | torchvision-style CNN | float [b, 3, 32, 32] | logits [b, 10] |
| cnn_uint8.onnx | the same, uint8 HWC, normalised in the graph | uint8 [b, 32, 32, 3] | softmax [b, 10] |
| vit.onnx | ViT-style classifier (patches, CLS token, 2 encoder layers) | float [b, 3, 32, 32] | logits [b, 10] |
| bert_seq.onnx | transformers BertForSequenceClassification | input_ids, attention_mask, token_type_ids | logits [b, 5] |
| bert_tok.onnx | transformers BertForTokenClassification | the same | logits [b, s, 7] |
| llama.onnx | transformers LlamaForCausalLM (rotary) | input_ids, attention_mask, position_ids | logits [b, s, 1000] |
| ctc.onnx | CRNN-style CTC recogniser | float [b, 3, 32, W] | softmax(axis=2) [b, W/4, 40] |
| jaxlike.onnx | written like jax2tf: int32 in, Exp/ReduceSum/Div softmax, no value_info | int32 [b, 16] | probabilities [b, 12] |
| audio.onnx | spectrogram classifier, time varies per row | float [b, T, 40] | logits [b, 6] |
| multilabel.onnx | sigmoid multi-label classifier | float [b, 24] | sigmoid [b, 8] |
| half.onnx | an MLP exported in half precision (`.half()`) | float16 [b, 24] | float16 logits [b, 10] |

Corpora (Parquet, 24 rows each; seeded): images as flat lists with a `shape` field metadata
(cnn, vit), uint8 HWC images as nested lists (cnn_uint8), spectrograms of 3 lengths as nested
lists (audio), strips of varying width as flat lists (ctc: the one symbolic dim is solved),
int32 tokens (jaxlike), features (multilabel). The text models read
fixtures/tinylm/holdout.jsonl with fixtures/tinylm/tokenizer.json (1,000 ids).

Usage: PY=$(LOGITS_VENV=.cache/venv-zoo scripts/pyenv.sh scripts/requirements-zoo.txt)
       $PY scripts/make_teacher_zoo.py
"""
import hashlib
import json
import pathlib

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "zoo"
OPSET = 17
ROWS = 24
torch.manual_seed(0)
rng = np.random.default_rng(0)


def export(model, args, name, inputs, outputs, dynamic, tol=1e-4):
    model.eval()
    path = OUT / name
    torch.onnx.export(
        model, args, str(path), input_names=inputs, output_names=outputs,
        dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
    )
    # Check the file against PyTorch through ONNX Runtime.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args = args if isinstance(args, tuple) else (args,)
    with torch.no_grad():
        want = model(*args)
    want = want if isinstance(want, torch.Tensor) else want[0]
    got = sess.run([outputs[0]], {n: a.numpy() for n, a in zip(inputs, args)})[0]
    diff = float(np.abs(got.astype(np.float32) - want.float().numpy()).max())
    assert diff < tol, (name, diff)
    return {"file": name, "max_abs_diff_vs_pytorch": diff}


class Cnn(nn.Module):
    """Conv-BN-ReLU blocks, global average pool, linear head (torchvision's shape, small)."""

    def __init__(self, uint8_hwc=False, softmax=False):
        super().__init__()
        self.uint8_hwc, self.softmax = uint8_hwc, softmax
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        if self.uint8_hwc:
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        h = self.body(x).mean(dim=(2, 3))
        z = self.head(h)
        return F.softmax(z, dim=-1) if self.softmax else z


class Vit(nn.Module):
    def __init__(self):
        super().__init__()
        d = 48
        self.patch = nn.Conv2d(3, d, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 96, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        p = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), p], dim=1) + self.pos
        h = self.norm(self.enc(h))
        return self.head(h[:, 0])


class Ctc(nn.Module):
    """CRNN-style: convolutions down to a row of columns, a BiGRU, per-column softmax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.rnn = nn.GRU(32 * 8, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 40)

    def forward(self, x):
        h = self.conv(x)  # [b, 32, 8, W/4]
        b, c, hh, w = h.shape
        h = h.permute(0, 3, 1, 2).reshape(b, w, c * hh)
        h, _ = self.rnn(h)
        return F.softmax(self.head(h), dim=2)


class Audio(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(40, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 6)

    def forward(self, x):  # [b, T, 40]
        h = self.conv(x.transpose(1, 2)).mean(dim=2)
        return self.head(h)


class MultiLabel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x):
        return torch.sigmoid(self.net(x))


class TextWrapper(nn.Module):
    """What optimum exports: the model's logits from named inputs, no cache."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args)), use_cache=False).logits if "position_ids" in self.names else self.model(**dict(zip(self.names, args))).logits


def write_parquet(name, columns, shapes=None):
    fields = []
    for c, a in columns.items():
        meta = {"shape": json.dumps(shapes[c])} if shapes and c in shapes else None
        fields.append(pa.field(c, a.type, metadata=meta))
    pq.write_table(pa.table(list(columns.values()), schema=pa.schema(fields)), OUT / name)


def jaxlike():
    """A graph as jax2tf/tf2onnx write it: int32 tokens, no value_info, written-out softmax."""
    emb = rng.normal(size=(256, 32)).astype(np.float32)
    w = (rng.normal(size=(32, 12)) / 6).astype(np.float32)
    b = rng.normal(size=(12,)).astype(np.float32)
    init = [
        onnx.numpy_helper.from_array(emb, "embedding"),
        onnx.numpy_helper.from_array(w, "dense/kernel"),
        onnx.numpy_helper.from_array(b, "dense/bias"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "axis_seq"),
        onnx.numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
    ]
    nodes = [
        oh.make_node("Cast", ["tokens"], ["tokens64"], to=onnx.TensorProto.INT64),
        oh.make_node("Gather", ["embedding", "tokens64"], ["embedded"]),
        oh.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0),
        oh.make_node("Tanh", ["pooled"], ["hidden"]),
        oh.make_node("MatMul", ["hidden", "dense/kernel"], ["dense/MatMul"]),
        oh.make_node("Add", ["dense/MatMul", "dense/bias"], ["logits"]),
        oh.make_node("ReduceMax", ["logits"], ["max"], axes=[-1], keepdims=1),
        oh.make_node("Sub", ["logits", "max"], ["shifted"]),
        oh.make_node("Exp", ["shifted"], ["exp"]),
        oh.make_node("ReduceSum", ["exp", "axis_last"], ["sum"], keepdims=1),
        oh.make_node("Div", ["exp", "sum"], ["probabilities"]),
    ]
    g = oh.make_graph(
        nodes, "jax2tf_like", [oh.make_tensor_value_info("tokens", onnx.TensorProto.INT32, ["batch", 16])],
        [oh.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["unk__0", "unk__1"])], init,
    )
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)], producer_name="tf2onnx-like")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, OUT / "jaxlike.onnx")
    return {"file": "jaxlike.onnx", "max_abs_diff_vs_pytorch": None}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    made = []
    img = torch.randn(2, 3, 32, 32)
    made.append(export(Cnn(), img, "cnn.onnx", ["pixels"], ["logits"], {"pixels": {0: "batch"}, "logits": {0: "batch"}}))
    u8 = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    made.append(export(Cnn(uint8_hwc=True, softmax=True), u8, "cnn_uint8.onnx", ["image"], ["probs"], {"image": {0: "batch"}, "probs": {0: "batch"}}))
    made.append(export(Vit(), img, "vit.onnx", ["pixel_values"], ["logits"], {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}))
    strip = torch.randn(2, 3, 32, 64)
    made.append(export(Ctc(), strip, "ctc.onnx", ["image"], ["probs"], {"image": {0: "batch", 3: "width"}, "probs": {0: "batch", 1: "steps"}}))
    spec = torch.randn(2, 50, 40)
    made.append(export(Audio(), spec, "audio.onnx", ["spectrogram"], ["logits"], {"spectrogram": {0: "batch", 1: "time"}, "logits": {0: "batch"}}))
    made.append(export(MultiLabel(), torch.randn(2, 24), "multilabel.onnx", ["features"], ["scores"], {"features": {0: "batch"}, "scores": {0: "batch"}}))
    half = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 10)).half()
    made.append(export(half, torch.randn(2, 24).half(), "half.onnx", ["features"], ["logits"], {"features": {0: "batch"}, "logits": {0: "batch"}}, tol=1e-2))

    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, LlamaConfig, LlamaForCausalLM
    bert = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)
    ids = torch.randint(3, 1000, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 9:] = 0
    types = torch.zeros(2, 12, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {0: "batch", 1: "sequence"} for n in names}
    seq = BertForSequenceClassification(BertConfig(num_labels=5, **bert))
    made.append(export(TextWrapper(seq, names), (ids, mask, types), "bert_seq.onnx", names, ["logits"], {**dyn, "logits": {0: "batch"}}))
    tok = BertForTokenClassification(BertConfig(num_labels=7, **bert))
    made.append(export(TextWrapper(tok, names), (ids, mask, types), "bert_tok.onnx", names, ["logits"], {**dyn, "logits": {0: "batch", 1: "sequence"}}))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False))
    lnames = ["input_ids", "attention_mask", "position_ids"]
    pos = torch.arange(12).unsqueeze(0).expand(2, -1).contiguous()
    made.append(export(TextWrapper(llama, lnames), (ids, torch.ones(2, 12, dtype=torch.int64), pos), "llama.onnx", lnames, ["logits"], {**{n: {0: "batch", 1: "sequence"} for n in lnames}, "logits": {0: "batch", 1: "sequence"}}))
    made.append(jaxlike())

    # Corpora.
    imgs = rng.normal(size=(ROWS, 3 * 32 * 32)).astype(np.float32)
    write_parquet("images.parquet", {
        "pixels": pa.array(list(imgs), type=pa.list_(pa.float32())),
        "label": pa.array(rng.integers(0, 10, ROWS), type=pa.int64()),
    }, shapes={"pixels": [3, 32, 32]})
    u8 = rng.integers(0, 256, size=(ROWS, 32, 32, 3)).astype(np.uint8)
    write_parquet("images_uint8.parquet", {"image": pa.array([r.tolist() for r in u8], type=pa.list_(pa.list_(pa.list_(pa.uint8()))))})
    widths = [64, 64, 96, 96, 96, 64] * (ROWS // 6)
    strips = [rng.normal(size=(3 * 32 * w,)).astype(np.float32) for w in widths]
    write_parquet("strips.parquet", {"image": pa.array(strips, type=pa.list_(pa.float32()))})
    lengths = [50, 50, 50, 80, 80, 30] * (ROWS // 6)
    specs = [rng.normal(size=(t, 40)).astype(np.float32).tolist() for t in lengths]
    write_parquet("spectrograms.parquet", {"spectrogram": pa.array(specs, type=pa.list_(pa.list_(pa.float32(), 40)))})
    write_parquet("tokens_int32.parquet", {"tokens": pa.array(list(rng.integers(0, 256, size=(ROWS, 16)).astype(np.int32)), type=pa.list_(pa.int32()))})
    write_parquet("features.parquet", {"features": pa.array(list(rng.normal(size=(ROWS, 24)).astype(np.float32)), type=pa.list_(pa.float32()))})
    docs = [json.loads(l) for l in open(ROOT / "fixtures/tinylm/holdout.jsonl")]
    with open(OUT / "docs.jsonl", "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": f"doc-{i}", "text": d["text"]}) + "\n")

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    import transformers
    versions["transformers"] = transformers.__version__
    files = sorted(p.name for p in OUT.iterdir() if p.name != "FIXTURES.json")
    (OUT / "FIXTURES.json").write_text(json.dumps({
        "made_by": "scripts/make_teacher_zoo.py", "versions": versions, "models": made,
        "sha256": {n: hashlib.sha256((OUT / n).read_bytes()).hexdigest() for n in files},
        "bytes": {n: (OUT / n).stat().st_size for n in files},
    }, indent=2) + "\n")
    for n in files:
        print(f"{n:24} {(OUT / n).stat().st_size:>9} bytes")


if __name__ == "__main__":
    main()
