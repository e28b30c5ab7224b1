#!/usr/bin/env python3
"""Checks a transformer encoder student exported by `logits-train` against an independent
NumPy forward, the way an ONNX Runtime user would run it:

- the forward is written here from student.safetensors (read by the `safetensors` package)
  and the spec in its metadata: token embedding (ids) or frames (the float input's sequence
  axis cut into patches, every other axis in order) times `wte`, plus learned positions;
  pre-LayerNorm blocks of bidirectional multi-head attention (padded keys masked) and a
  tanh-GELU MLP; a final LayerNorm; the mean of the real positions when pooled; the head;
- student.onnx, run by ONNX Runtime's Python API on padded batches (ids: rows of several
  lengths with their attention_mask; frames: a batch per length), matches it to
  1e-4 x max(1, |logit|) on every real position;
- an input longer than the student's context is refused by a node that says so.

Usage: check_encoder_export.py RUN_DIR
Prints `oracle: P passed, F failed` (counted by the test command) and exits non-zero on a
failure.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from safetensors import safe_open
from safetensors.numpy import load_file

LN_EPS = 1e-5
GELU_C = np.float32(0.7978846)


def layer_norm(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + LN_EPS) * g + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(GELU_C * (x + 0.044715 * x**3)))


def frames_of(x, fr):
    """[B, ...row shape...] → [B, T, width]: the sequence axis cut into patches."""
    b = x.shape[0]
    axis = fr["axis"] + 1
    shape = list(x.shape)
    n = shape[axis] // fr["patch"]
    x = x.reshape(shape[:axis] + [n, fr["patch"]] + shape[axis + 1 :])
    perm = [0, axis] + [i for i in range(1, x.ndim) if i != axis]
    return x.transpose(perm).reshape(b, n, -1)


def forward(w, spec, x, mask):
    """Logits of a batch: x is ids [B, T] or the float input; mask [B, T] (1 real)."""
    enc = spec["encoder"]
    d, nh = spec["dim"], spec["heads"]
    hd = d // nh
    if enc["frames"] is None:
        h = w["wte"][x]
    else:
        h = frames_of(x, enc["frames"]) @ w["wte"]
    b, t, _ = h.shape
    h = h + w["wpe"][:t]
    key_bias = (mask[:, None, None, :] - 1.0) * 1e9
    for i in range(spec["layers"]):
        p = f"h.{i}."
        a = layer_norm(h, w[p + "ln_1.gamma"], w[p + "ln_1.beta"])
        qkv = a @ w[p + "attn.weight"] + w[p + "attn.bias"]
        q, k, v = (qkv[..., j * d : (j + 1) * d].reshape(b, t, nh, hd).transpose(0, 2, 1, 3) for j in range(3))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + key_bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        o = (s @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        h = h + o @ w[p + "proj.weight"] + w[p + "proj.bias"]
        m = layer_norm(h, w[p + "ln_2.gamma"], w[p + "ln_2.beta"])
        f = gelu(m @ w[p + "fc.weight"] + w[p + "fc.bias"])
        h = h + f @ w[p + "fc_out.weight"] + w[p + "fc_out.bias"]
    h = layer_norm(h, w["ln_f.gamma"], w["ln_f.beta"])
    if enc["pool"]:
        h = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return h @ w["head"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    a = ap.parse_args()
    run = Path(a.run)
    st = run / "student.safetensors"
    with safe_open(str(st), "np") as f:
        info = json.loads(f.metadata()["logits.student"])
    spec = info["spec"]
    w = {k: v.astype(np.float64) for k, v in load_file(str(st)).items()}
    sess = ort.InferenceSession(str(run / "student.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    enc = spec["encoder"]
    rng = np.random.default_rng(0)
    passed = failed = 0

    def compare(what, got, want, mask):
        nonlocal passed, failed
        if not enc["pool"]:
            keep = mask.astype(bool)
            got, want = got[keep], want[keep]
        err = np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)))
        if err <= 1e-4:
            passed += 1
        else:
            failed += 1
            print(f"FAILED {what}: max scaled difference {err:.3g}")

    ctx = spec["context"]
    if enc["frames"] is None:
        if names != ["input_ids", "attention_mask"]:
            failed += 1
            print(f"FAILED inputs {names}, expected input_ids and attention_mask")
        lens = [ctx, max(1, ctx // 2), 1, max(1, ctx - 3)]
        ids = rng.integers(0, spec["vocab"], size=(len(lens), ctx))
        mask = np.array([[1 if p < n else 0 for p in range(ctx)] for n in lens])
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        compare("padded batch", got, forward(w, spec, ids, mask.astype(np.float64)), mask)
        too_long = {"input_ids": np.zeros((1, ctx + 1), np.int64), "attention_mask": np.ones((1, ctx + 1), np.int64)}
    else:
        fr = enc["frames"]
        if names != [fr["input"]]:
            failed += 1
            print(f"FAILED inputs {names}, expected [{fr['input']!r}] (the teacher's name)")
        for n in sorted({ctx, max(1, ctx // 2), 1}):
            shape = [3] + [s if i != fr["axis"] else n * fr["patch"] for i, s in enumerate(fr["shape"])]
            x = rng.standard_normal(shape).astype(np.float32)
            mask = np.ones((shape[0], n))
            got = sess.run(None, {fr["input"]: x})[0]
            compare(f"{n} frames", got, forward(w, spec, x.astype(np.float64), mask), mask)
        shape = [1] + [s if i != fr["axis"] else (ctx + 1) * fr["patch"] for i, s in enumerate(fr["shape"])]
        too_long = {fr["input"]: np.zeros(shape, np.float32)}
    try:
        sess.run(None, too_long)
        failed += 1
        print(f"FAILED an input longer than the context ({ctx}) ran")
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own error types
        if "context" in str(e):
            passed += 1
        else:
            failed += 1
            print(f"FAILED the too-long input failed without naming the context: {e}")
    print(f"oracle: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
