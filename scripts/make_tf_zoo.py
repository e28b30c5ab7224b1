#!/usr/bin/env python3
"""Makes the TensorFlow teachers of the teacher-family matrix (fixtures/zoo/tf_*.onnx) with
tf2onnx, from TensorFlow functions with random (seeded) weights, and their corpora.

| file | family | input | output |
|---|---|---|---|
| tf_bytes.onnx | byte classifier (embedding, mean, MLP) | int32 [b, 64] | softmax [unk, 12] |
| tf_cnn.onnx | NHWC image classifier (tf.nn.conv2d) | float [b, 32, 32, 3] | logits [unk, 10] |

tf2onnx writes no value_info for internal tensors and a symbolic batch named `unk__N`, as it
does for real models. Corpora: tf_bytes.parquet (uint8 values, 24 rows), tf_images.parquet
(nested [32][32][3] float lists, 24 rows).

Usage: PY=$(LOGITS_VENV=.cache/venv-tf scripts/pyenv.sh scripts/requirements-zoo-tf.txt)
       $PY scripts/make_tf_zoo.py   (writes fixtures/zoo/TF.json with the versions and the
       differences against TensorFlow)
"""
import json
import pathlib

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
import tf2onnx

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "zoo"
ROWS = 24
tf.random.set_seed(0)
rng = np.random.default_rng(1)


def check(path, f, x):
    """The ONNX file through ONNX Runtime against the TensorFlow function."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    diff = float(np.abs(got - f(tf.constant(x)).numpy()).max())
    assert diff < 1e-4, (path, diff)
    return diff


def main():
    emb = tf.Variable(tf.random.normal([256, 32]))
    w1 = tf.Variable(tf.random.normal([32, 64]) * 0.2)
    b1 = tf.Variable(tf.zeros([64]))
    w2 = tf.Variable(tf.random.normal([64, 12]) * 0.2)
    b2 = tf.Variable(tf.random.normal([12]))

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.int32, name="bytes")])
    def byte_classifier(x):
        h = tf.reduce_mean(tf.gather(emb, x), axis=1)
        h = tf.nn.relu(h @ w1 + b1)
        return tf.nn.softmax(h @ w2 + b2)

    k1 = tf.Variable(tf.random.normal([3, 3, 3, 16]) * 0.3)
    k2 = tf.Variable(tf.random.normal([3, 3, 16, 32]) * 0.2)
    wd = tf.Variable(tf.random.normal([32, 10]) * 0.3)
    bd = tf.Variable(tf.random.normal([10]))

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="image")])
    def cnn(x):
        h = tf.nn.relu(tf.nn.conv2d(x, k1, 1, "SAME"))
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.nn.relu(tf.nn.conv2d(h, k2, 1, "SAME"))
        return tf.reduce_mean(h, axis=[1, 2]) @ wd + bd

    made = {}
    for name, f in [("tf_bytes.onnx", byte_classifier), ("tf_cnn.onnx", cnn)]:
        tf2onnx.convert.from_function(f, input_signature=f.input_signature, opset=13, output_path=str(OUT / name))
    made["tf_bytes.onnx"] = check(OUT / "tf_bytes.onnx", byte_classifier, rng.integers(0, 256, (3, 64)).astype(np.int32))
    made["tf_cnn.onnx"] = check(OUT / "tf_cnn.onnx", cnn, rng.normal(size=(3, 32, 32, 3)).astype(np.float32))
    bytes_ = rng.integers(0, 256, (ROWS, 64)).astype(np.uint8)
    pq.write_table(pa.table({"bytes": pa.array(list(bytes_), type=pa.list_(pa.uint8()))}), OUT / "tf_bytes.parquet")
    imgs = rng.normal(size=(ROWS, 32, 32, 3)).astype(np.float32)
    pq.write_table(pa.table({"image": pa.array([i.tolist() for i in imgs], type=pa.list_(pa.list_(pa.list_(pa.float32(), 3), 32), 32))}), OUT / "tf_images.parquet")
    (OUT / "TF.json").write_text(json.dumps({
        "made_by": "scripts/make_tf_zoo.py",
        "versions": {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnxruntime": ort.__version__},
        "max_abs_diff_vs_tensorflow": made,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
