#!/usr/bin/env python3
"""NumPy reference for the response-based distillation losses of logits-student.

Writes fixtures/golden/kd_response.json: for fixed random student logits and teacher top-k
targets, every (divergence, top-k mode) pair's loss and its gradient with respect to the
student logits. Written independently of the Rust code: the losses follow
../shared/KD-REFERENCE.md's formulas directly, and gradients are taken by the complex-step
method (exact to machine precision, no hand-derived chain rule).

Usage: PY=$(scripts/pyenv.sh); $PY scripts/kd_reference.py
"""
import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "golden" / "kd_response.json"


def softmax(s, t):
    z = s / t
    z = z - z.real.max()
    e = np.exp(z)
    return e / e.sum()


def buckets(q, ids, logp, mode):
    p_k = np.exp(logp)
    q_k = q[ids]
    if mode == "tail":
        return np.append(p_k, 1 - p_k.sum()), np.append(q_k, 1 - q_k.sum())
    return p_k / p_k.sum(), q_k / q_k.sum()


def kl(a, b):
    return np.sum(a * (np.log(a) - np.log(b)))


def loss(s, ids, logp, t, div, mode):
    p, q = buckets(softmax(s, t), ids, logp, mode)
    if div == "forward_kl":
        return t * t * kl(p, q)
    if div == "reverse_kl":
        return kl(q, p)
    beta = float(div.split(":")[1])
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def grad(s, *args):
    h = 1e-20
    g = np.zeros_like(s)
    for i in range(len(s)):
        x = s.astype(np.complex128)
        x[i] += 1j * h
        g[i] = loss(x, *args).imag / h
    return g


def main():
    rng = np.random.default_rng(1234)
    cases = []
    for case in range(4):
        v = [50, 50, 200, 200][case]
        k = [5, 10, 8, 32][case]
        t = [1.0, 2.0, 4.0, 1.5][case]
        s = (rng.normal(size=v) * 2).astype(np.float32).astype(np.float64)
        z = rng.normal(size=v) * 3
        z[rng.integers(v)] += 6
        lz = np.log(np.sum(np.exp(z / t)))
        ids = np.lexsort((np.arange(v), -z))[:k]
        logp = z[ids] / t - lz
        for div in ["forward_kl", "reverse_kl", "jsd:0.5", "jsd:0.1"]:
            for mode in ["tail", "renormalize"]:
                cases.append({
                    "student_logits": s.tolist(), "ids": ids.tolist(), "teacher_logprobs": logp.tolist(),
                    "temperature": t, "divergence": div, "mode": mode,
                    "loss": float(loss(s, ids, logp, t, div, mode)),
                    "grad": grad(s, ids, logp, t, div, mode).tolist(),
                })
    feats = []
    for rows, dim in [(4, 8), (16, 32)]:
        s = (rng.normal(size=rows * dim)).astype(np.float32).astype(np.float64)
        t = (rng.normal(size=rows * dim) * 2).astype(np.float32).astype(np.float64)
        mse = lambda x: np.mean((x - t) ** 2)
        def cos(x):
            a, b = x.reshape(rows, dim), t.reshape(rows, dim)
            c = (a * b).sum(1) / (np.sqrt((a * a).sum(1)) * np.sqrt((b * b).sum(1)))
            return np.mean(1 - c)
        for name, f in [("mse", mse), ("cosine", cos)]:
            g = np.zeros_like(s)
            for i in range(len(s)):
                x = s.astype(np.complex128)
                x[i] += 1e-20j
                g[i] = f(x).imag / 1e-20
            feats.append({"loss_name": name, "dim": dim, "student": s.tolist(), "teacher": t.tolist(),
                          "loss": float(f(s)), "grad": g.tolist()})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"made_by": "scripts/kd_reference.py (NumPy, complex-step gradients)", "cases": cases, "feature_cases": feats}) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
