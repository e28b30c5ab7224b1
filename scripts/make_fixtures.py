#!/usr/bin/env python3
"""Makes the committed classifier fixture: a teacher genuinely trained on real data.

Data: scikit-learn's bundled `digits` set (1,797 real 8x8 handwritten digits, shipped inside
the scikit-learn wheel; nothing is downloaded). Teacher: an MLP 64-512-512-10 (ReLU), trained
with scikit-learn, exported to ONNX with the `onnx` package's helpers as
Gemm -> Relu -> Gemm -> Relu -> Gemm, with named intermediate tensors (`hidden1`, `hidden2`)
usable as features. A second export ends in Softmax (`digits_teacher_softmax.onnx`) to exercise
softmax detection.

Outputs under fixtures/digits/: teacher ONNX files, `train.parquet` and `holdout.parquet`
(columns: `pixels` list<float32>[64] scaled to [0, 1], `label` int64, `id` string), and
`FIXTURES.json` with sha256, sizes, accuracies and the command that made them.

Usage: scripts/pyenv.sh scripts/requirements-fixtures.txt  (prints PY), then
       PY scripts/make_fixtures.py
Deterministic for a given package set (seeded split and training).
"""
import hashlib
import json
import pathlib
import sys

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "digits"
SEED = 20261128


def export(mlp, path, softmax=False):
    names = ["hidden1", "hidden2", "logits"]
    nodes, inits = [], []
    prev = "pixels"
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        wn, bn = f"fc{i + 1}.weight", f"fc{i + 1}.bias"
        inits += [numpy_helper.from_array(w.astype(np.float32), wn),
                  numpy_helper.from_array(b.astype(np.float32), bn)]
        last = i == len(mlp.coefs_) - 1
        out = "logits" if last else f"fc{i + 1}"
        nodes.append(helper.make_node("Gemm", [prev, wn, bn], [out], name=f"fc{i + 1}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [names[i]], name=f"relu{i + 1}"))
            prev = names[i]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"))
        outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])]
    value_info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w.shape[1]])
                  for n, w in zip(["hidden1", "hidden2"], mlp.coefs_)]
    graph = helper.make_graph(
        nodes, "digits_teacher",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        outputs, initializer=inits, value_info=value_info)
    model = helper.make_model(graph, producer_name="logits make_fixtures.py",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def table(x, y, ids):
    return pa.table({
        "id": pa.array(ids, pa.string()),
        "pixels": pa.array(list(x.astype(np.float32)), pa.list_(pa.float32())),
        "label": pa.array(y.astype(np.int64), pa.int64()),
    })


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, ho = train_test_split(idx, test_size=0.2, random_state=SEED, stratify=y)
    tr, ho = np.sort(tr), np.sort(ho)
    mlp = MLPClassifier(hidden_layer_sizes=(512, 512), activation="relu", alpha=1e-4,
                        max_iter=400, random_state=SEED, early_stopping=False)
    mlp.fit(x[tr], y[tr])
    acc_train = float(mlp.score(x[tr], y[tr]))
    acc_holdout = float(mlp.score(x[ho], y[ho]))
    export(mlp, OUT / "digits_teacher.onnx")
    export(mlp, OUT / "digits_teacher_softmax.onnx", softmax=True)
    pq.write_table(table(x[tr], y[tr], [f"digit-{i}" for i in tr]), OUT / "train.parquet")
    pq.write_table(table(x[ho], y[ho], [f"digit-{i}" for i in ho]), OUT / "holdout.parquet")
    params = sum(w.size + b.size for w, b in zip(mlp.coefs_, mlp.intercepts_))
    files = ["digits_teacher.onnx", "digits_teacher_softmax.onnx", "train.parquet", "holdout.parquet"]
    info = {
        "made_by": "scripts/pyenv.sh scripts/requirements-fixtures.txt; .cache/venv/bin/python scripts/make_fixtures.py",
        "data": "scikit-learn load_digits (bundled), pixels/16, stratified 80/20 split, seed %d" % SEED,
        "teacher": {"layers": [64, 512, 512, 10], "parameters": int(params),
                    "train_accuracy": acc_train, "holdout_accuracy": acc_holdout,
                    "features": ["hidden1", "hidden2"]},
        "rows": {"train": int(len(tr)), "holdout": int(len(ho))},
        "files": {f: {"sha256": sha(OUT / f), "bytes": (OUT / f).stat().st_size} for f in files},
    }
    (OUT / "FIXTURES.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    # The mostly-unlabelled copy of the training corpus that the demo distils on.
    import make_few_labels
    make_few_labels.main()


if __name__ == "__main__":
    sys.exit(main())
