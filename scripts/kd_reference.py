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


# Relation losses, transcribed from RepDistiller (HobbitLong/RepDistiller, distiller_zoo):
# RKDLoss.pdist / forward, Similarity, PKT. Written with analytic operations only (sqrt of a sum
# of squares instead of abs/norm, real-part comparisons) so the complex step goes through.

def smooth_l1(x):
    return np.where(np.abs(x.real) < 1, 0.5 * x * x, np.sign(x.real) * x - 0.5).mean()


def pdist(e):
    sq = (e * e).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * e @ e.T
    n = len(e)
    d = np.zeros((n, n), dtype=e.dtype)
    off = ~np.eye(n, dtype=bool)
    d[off] = np.sqrt(d2[off])
    return d


def rkd_distance(s, t):
    td = pdist(t)
    td = td / td[td.real > 0].mean()
    d = pdist(s)
    d = d / d[d.real > 0].mean()
    return smooth_l1(d - td)


def unit_diff(x):
    v = x[None, :, :] - x[:, None, :]          # v[i, j] = x_j - x_i
    n = np.sqrt((v * v).sum(2, keepdims=True))
    n = np.where(n.real > 1e-12, n, 1e-12)
    return v / n


def rkd_angle(s, t):
    et, es = unit_diff(t), unit_diff(s)
    return smooth_l1(np.einsum("ijd,ikd->ijk", es, es) - np.einsum("ijd,ikd->ijk", et, et))


def sp(s, t):
    def g(x):
        m = x @ x.T
        return m / np.sqrt((m * m).sum(1, keepdims=True))
    d = g(t) - g(s)
    return (d * d).sum() / len(s) ** 2


def pkt(s, t, eps=1e-7):
    def p(x):
        x = x / (np.sqrt((x * x).sum(1, keepdims=True)) + eps)
        m = (x @ x.T + 1) / 2
        return m / m.sum(1, keepdims=True)
    ps, pt = p(s), p(t)
    return np.mean(pt * np.log((pt + eps) / (ps + eps)))


RELATIONS = {"rkd_distance": rkd_distance, "rkd_angle": rkd_angle, "sp": sp, "pkt": pkt}


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
    rels = []
    for rows, ds, dt in [(6, 5, 9), (12, 16, 8)]:
        s = rng.normal(size=(rows, ds)).astype(np.float32).astype(np.float64)
        t = (rng.normal(size=(rows, dt)) * 2).astype(np.float32).astype(np.float64)
        for name, f in RELATIONS.items():
            g = np.zeros_like(s)
            for i in range(rows):
                for j in range(ds):
                    x = s.astype(np.complex128)
                    x[i, j] += 1e-20j
                    g[i, j] = f(x, t).imag / 1e-20
            rels.append({"loss_name": name, "student": s.tolist(), "teacher": t.tolist(),
                         "loss": float(f(s, t).real), "grad": g.tolist()})
    # RS-KD sampled targets (Anshumann et al. 2025): T² · cross-entropy of softmax(s/T) against
    # the empirical distribution counts / draws of ids drawn from the teacher.
    sampled = []
    for v, draws, t in [(50, 20, 1.0), (200, 50, 2.0)]:
        s = (rng.normal(size=v) * 2).astype(np.float32).astype(np.float64)
        p = softmax(rng.normal(size=v) * 3, t).real
        ids, counts = np.unique(rng.choice(v, size=draws, p=p), return_counts=True)

        def rs(x):
            return -t * t * np.sum(counts / draws * np.log(softmax(x, t)[ids]))
        g = np.zeros_like(s)
        for i in range(v):
            x = s.astype(np.complex128)
            x[i] += 1e-20j
            g[i] = rs(x).imag / 1e-20
        sampled.append({"student_logits": s.tolist(), "ids": ids.tolist(), "counts": counts.tolist(),
                        "temperature": t, "loss": float(rs(s)), "grad": g.tolist()})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"made_by": "scripts/kd_reference.py (NumPy, complex-step gradients)", "cases": cases, "feature_cases": feats, "relation_cases": rels, "sampled_cases": sampled}) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
