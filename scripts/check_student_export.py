#!/usr/bin/env python3
"""Checks an MLP student exported by `logits-train` the way a PyTorch / ONNX Runtime user
would load it, with nothing from this project:

- student.safetensors, read by the `safetensors` package, has PyTorch's layout: each
  `layers.{i}.weight` is (out, in) as `nn.Linear` holds it, LayerNorm gains are
  `norms.{i}.weight` / `norms.{i}.bias`, metadata `format = pt`;
- the forward written from those tensors with `torch.nn` semantics in NumPy
  (y = x W^T + b, LayerNorm, activation) matches student.onnx run by ONNX Runtime's Python
  API on raw inputs, to 1e-4 x max(1, |logit|);
- student.onnx is in the opset asked for, its input keeps the teacher's input name, and its
  `custom_metadata_map` describes the student (logits.student and one entry per field).

Usage: check_student_export.py RUN_DIR [--opset N] [--input NAME]
Prints `oracle: P passed, F failed` (counted by the test command) and exits non-zero on a
failure.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file
from safetensors import safe_open

LN_EPS = 1e-5
GELU_C = np.float32(0.7978846)


def act(name, x):
    if name == "relu":
        return np.maximum(x, 0)
    if name == "tanh":
        return np.tanh(x)
    if name == "gelu":
        return 0.5 * x * (1 + np.tanh(GELU_C * (x + 0.044715 * x**3)))
    raise SystemExit(f"unknown activation {name!r}")


def conv_front(t, conv, x):
    """nn.Conv2d(kernel 3, or 1 along a side of length 1; 'same' padding) -> ReLU ->
    MaxPool2d(2 per side that has 2) blocks on per-channel standardised images, flattened as
    torch.flatten(x, 1) does, written with NumPy."""
    c, h, w = conv["image"]
    if conv.get("channels_last"):
        img = x.astype(np.float64).reshape(len(x), h, w, c).transpose(0, 3, 1, 2)
    else:
        img = x.astype(np.float64).reshape(len(x), c, h, w)
    img = (img - t["input.mean"].reshape(1, c, 1, 1)) * t["input.scale"].reshape(1, c, 1, 1)
    for i in range(len(conv["channels"])):
        k = t[f"conv.{i}.weight"].astype(np.float64)  # (O, C, kh, kw)
        kh, kw = k.shape[2], k.shape[3]
        b, cin, hh, ww = img.shape
        p = np.pad(img, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
        out = np.zeros((b, k.shape[0], hh, ww))
        for ky in range(kh):
            for kx in range(kw):
                out += np.einsum("bchw,oc->bohw", p[:, :, ky:ky + hh, kx:kx + ww], k[:, :, ky, kx])
        out = np.maximum(out + t[f"conv.{i}.bias"].reshape(1, -1, 1, 1), 0)
        sy, sx = (2 if hh >= 2 else 1), (2 if ww >= 2 else 1)
        h2, w2 = hh // sy, ww // sx
        img = out[:, :, :sy * h2, :sx * w2].reshape(b, -1, h2, sy, w2, sx).max(axis=(3, 5))
    return img.reshape(len(x), -1)


def torch_forward(t, info, x):
    """The MLP as torch.nn.Linear / LayerNorm / activation compute it."""
    n = len(info["widths"]) - 1
    if info.get("conv") and info.get("embed"):
        # Embedded ids, transposed to dim × n channels, through the convolutions.
        e = t["embed.weight"].astype(np.float64)[x.astype(np.int64)]  # (b, n, dim)
        h = conv_front(t, info["conv"], e.transpose(0, 2, 1).reshape(len(x), -1))
    elif info.get("conv"):
        h = conv_front(t, info["conv"], x)
    elif info.get("embed"):
        # nn.Embedding on the ids, rows concatenated.
        h = t["embed.weight"].astype(np.float64)[x.astype(np.int64)].reshape(len(x), -1)
    else:
        h = x.astype(np.float64)
    for i in range(n):
        w = t[f"layers.{i}.weight"].astype(np.float64)  # (out, in), as nn.Linear
        h = h @ w.T + t[f"layers.{i}.bias"]
        if i == n - 1:
            break
        if info["layer_norm"]:
            mu = h.mean(-1, keepdims=True)
            var = ((h - mu) ** 2).mean(-1, keepdims=True)
            h = (h - mu) / np.sqrt(var + LN_EPS) * t[f"norms.{i}.weight"] + t[f"norms.{i}.bias"]
        h = act(info["activation"], h)
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--opset", type=int, default=None)
    ap.add_argument("--input", default=None, help="the teacher's input name")
    a = ap.parse_args()
    run = Path(a.run)
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if ok:
            passed += 1
        else:
            failed += 1

    st = run / "student.safetensors"
    t = load_file(str(st))
    with safe_open(str(st), framework="np") as f:
        meta = f.metadata() or {}
    info = json.loads(meta["logits.student"])
    widths = info["widths"]
    check(meta.get("format") == "pt", f"safetensors metadata format=pt ({meta.get('format')})")
    if info.get("conv") and info.get("embed"):
        inputs = info["conv"]["image"][2]
    elif info.get("conv"):
        inputs = int(np.prod(info["conv"]["image"]))
    elif info.get("embed"):
        inputs = widths[0] // info["embed"][1]
    else:
        inputs = widths[0]
    shapes_ok = all(
        t[f"layers.{i}.weight"].shape == (widths[i + 1], widths[i])
        and t[f"layers.{i}.bias"].shape == (widths[i + 1],)
        for i in range(len(widths) - 1)
    )
    check(shapes_ok, f"nn.Linear layout (out, in) for widths {widths}")

    model = onnx.load(str(run / "student.onnx"))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if a.opset is not None:
        check(opset == a.opset, f"opset {opset} (asked for {a.opset})")
    sess = ort.InferenceSession(str(run / "student.onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    check(inp.name == info["input"], f"ONNX input named {inp.name!r} (student input {info['input']!r})")
    if a.input is not None:
        check(inp.name == a.input, f"ONNX input is the teacher's {a.input!r}")
    custom = sess.get_modelmeta().custom_metadata_map
    desc = json.loads(custom.get("logits.student", "{}"))
    check(
        desc.get("dataset_id") == info["dataset_id"]
        and custom.get("logits.dataset_id") == info["dataset_id"]
        and custom.get("logits.teacher_sha256") == info["teacher_sha256"],
        "custom_metadata_map describes the student (logits.student, logits.dataset_id, logits.teacher_sha256)",
    )

    # Raw inputs on the scale the teacher saw: the standardisation is inside the weights.
    rng = np.random.default_rng(0)
    if info.get("embed"):
        x = rng.integers(0, info["embed"][0], (64, inputs)).astype(np.float32)
    else:
        x = (rng.random((64, inputs)) * 16).astype(np.float32)
    got = sess.run(None, {inp.name: x})[0].astype(np.float64)
    want = torch_forward(t, info, x)
    d = float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))
    check(d <= 1e-4, f"ONNX Runtime vs torch.nn-semantics forward of the safetensors: {d:.2e} (<= 1e-4)")

    print(f"oracle: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
