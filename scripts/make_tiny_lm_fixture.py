#!/usr/bin/env python3
"""Makes the tiny language-model fixture used to test per-token builds (not a quality teacher).

- Text: real English prose available offline, the docstrings of Python standard-library
  modules (shipped with every CPython), one document per module, split 90/10 into
  `train.jsonl` and `holdout.jsonl` (field `text`).
- Tokenizer: a byte-level BPE `tokenizer.json` (vocabulary 1,000, with `<bos>`/`<eos>` added by
  a template post-processor and `<pad>` as padding) trained with the `tokenizers` package.
- Model: a random-weight causal LM in ONNX (input_ids, attention_mask -> logits
  [batch, sequence, vocab]): embedding, causal running sum (CumSum over the sequence), tanh
  (exposed as `hidden`, [batch, sequence, 32]), linear head. Position t sees tokens <= t only.
  The trained GPT-2-style teacher for distillation quality is a separate fixture.

Usage: PY=$(scripts/pyenv.sh scripts/requirements-fixtures.txt); $PY scripts/make_tiny_lm_fixture.py
       $PY scripts/make_tiny_lm_fixture.py --bench-model OUT.onnx [--axis 32000] [--dim 256]
The second form writes only a random benchmark model of the same shape of graph, taking ids of
the fixture tokenizer and giving logits over `axis` entries (not committed; benchmarks only).
"""
import hashlib
import importlib
import json
import pathlib
import pkgutil
import pydoc
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fixture_text import train_bpe, write_jsonl  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "tinylm"
SEED = 7
VOCAB = 1000
DIM = 32
MODULES = ["json", "csv", "argparse", "collections", "itertools", "functools", "pathlib", "re",
           "string", "textwrap", "datetime", "calendar", "decimal", "fractions", "random",
           "statistics", "heapq", "bisect", "array", "enum", "dataclasses", "typing", "abc",
           "contextlib", "logging", "unittest", "doctest", "difflib", "shutil", "tempfile",
           "glob", "fnmatch", "zipfile", "tarfile", "gzip", "bz2", "lzma", "hashlib", "hmac",
           "secrets", "base64", "binascii", "struct", "codecs", "io", "os", "sys", "time",
           "threading", "queue", "sched", "subprocess", "socket", "ssl", "select", "signal",
           "email", "mailbox", "html", "xml", "urllib", "http", "ftplib", "smtplib", "uuid",
           "ipaddress", "wave", "colorsys", "gettext", "locale", "shlex", "cmd", "pprint",
           "reprlib", "copy", "pickle", "shelve", "sqlite3", "zlib", "math", "cmath", "numbers",
           "operator", "inspect", "ast", "dis", "tokenize", "keyword", "traceback", "warnings",
           "weakref", "gc", "types", "importlib", "pkgutil", "zipimport", "platform", "errno"]


def documents():
    docs = []
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        text = pydoc.getdoc(mod).strip()
        paras = [p.replace("\n", " ").strip() for p in text.split("\n\n")]
        paras = [p for p in paras if len(p) > 40]
        if paras:
            docs.append(" ".join(paras))
    return docs


def lm_model(vocab_in, dim, axis, path):
    w = np.random.default_rng(SEED)
    emb = (w.normal(size=(vocab_in, dim)) * 0.5 / np.sqrt(dim / 32)).astype(np.float32)
    head = (w.normal(size=(dim, axis)) * 1.5 / np.sqrt(dim / 32)).astype(np.float32)
    bias = (w.normal(size=(axis,)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["emb"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["emb_masked"]),
        helper.make_node("CumSum", ["emb_masked", "axis_seq"], ["running"]),
        helper.make_node("Tanh", ["running"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "head"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(emb, "embedding"), numpy_helper.from_array(head, "head"),
             numpy_helper.from_array(bias, "bias"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
             numpy_helper.from_array(np.array(1, dtype=np.int64), "axis_seq")]
    graph = helper.make_graph(
        nodes, "tiny_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", axis])],
        initializer=inits,
        value_info=[helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", dim])])
    model = helper.make_model(graph, producer_name="logits make_tiny_lm_fixture.py",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    if "--bench-model" in sys.argv:
        a = sys.argv
        get = lambda k, d: int(a[a.index(k) + 1]) if k in a else d
        vocab_in = Tokenizer.from_file(str(OUT / "tokenizer.json")).get_vocab_size()
        lm_model(vocab_in, get("--dim", 256), get("--axis", 32000), a[a.index("--bench-model") + 1])
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    docs = documents()
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(docs))
    cut = int(len(docs) * 0.9)
    train = [docs[i] for i in sorted(order[:cut])]
    hold = [docs[i] for i in sorted(order[cut:])]
    write_jsonl(OUT / "train.jsonl", train)
    write_jsonl(OUT / "holdout.jsonl", hold)
    tok = train_bpe(train, VOCAB)
    tok.enable_padding(pad_id=0, pad_token="<pad>")
    tok.save(str(OUT / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    lm_model(vocab, DIM, vocab, OUT / "tiny_lm.onnx")
    files = ["tokenizer.json", "tiny_lm.onnx", "train.jsonl", "holdout.jsonl"]
    info = {
        "made_by": "PY=$(scripts/pyenv.sh scripts/requirements-fixtures.txt); $PY scripts/make_tiny_lm_fixture.py",
        "purpose": "tests of per-token builds; random weights, not a quality teacher",
        "documents": {"train": len(train), "holdout": len(hold)},
        "vocab_size": vocab,
        "files": {f: {"sha256": hashlib.sha256((OUT / f).read_bytes()).hexdigest(), "bytes": (OUT / f).stat().st_size} for f in files},
    }
    (OUT / "FIXTURES.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    sys.exit(main())
