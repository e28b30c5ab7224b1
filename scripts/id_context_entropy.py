#!/usr/bin/env python3
"""How many bits a per-token dataset's top-k ids need under simple adaptive models — the
groundwork for compact LM targets (issue: compact targets on real language models).

Reads the first N windows of a per-token dataset built by `logits-build` (one shard), takes
every position's kept ids in their stored (logit) order, and reports the mean code length per
id, in bits, of adaptive models a decoder could replicate (each id coded with the counts seen
so far, then counted):
- order 0: p(id) = (count(id) + 0.5) / (n + 0.5 V);
- the input token at the position as context, blended with order 0 (escape weight 2):
  p(id | token) = (count(token, id) + 2 p0(id)) / (count(token) + 2);
- the same with the rank (0, 1, 2, 3+) added to the context;
- rank 0 by the input token, the other ranks by the position's top-1 id.
Also the order-0 plug-in entropy. Pure Python (slow: ~10 s per million ids).

Usage: id_context_entropy.py DATASET [WINDOWS]
"""
import collections
import json
import math
import sys

import pyarrow.parquet as pq


def main(ds, nwin):
    m = json.loads(open(f"{ds}/manifest.json").read())
    t = pq.read_table(f"{ds}/{m['shards'][0]['path']}", columns=["in_input_ids", "topk_ids"])
    rows = t.slice(0, nwin).to_pylist()
    v = m["targets"]["axis_size"]
    pos = [(w["in_input_ids"][p], w["topk_ids"][p]) for w in rows for p in range(len(w["topk_ids"]))]
    n_ids = sum(len(k) for _, k in pos)
    c0 = collections.Counter(i for _, k in pos for i in k)
    h0 = -sum(c / n_ids * math.log2(c / n_ids) for c in c0.values())

    def adaptive(context):
        """Mean bits per id; context(token, rank, ids) -> a hashable key or None."""
        g, gn = collections.Counter(), 0
        cc, cn = collections.defaultdict(collections.Counter), collections.Counter()
        bits = 0.0
        for tok, ks in pos:
            for r, i in enumerate(ks):
                p0 = (g[i] + 0.5) / (gn + 0.5 * v)
                c = context(tok, r, ks)
                p = p0 if c is None else (cc[c][i] + 2.0 * p0) / (cn[c] + 2.0)
                bits -= math.log2(p)
                g[i] += 1
                gn += 1
                if c is not None:
                    cc[c][i] += 1
                    cn[c] += 1
        return round(bits / n_ids, 2)

    print(json.dumps({
        "dataset": ds, "windows": len(rows), "positions": len(pos), "ids": n_ids, "vocabulary": v,
        "order0_plugin": round(h0, 2),
        "adaptive_order0": adaptive(lambda tok, r, ks: None),
        "adaptive_by_input_token": adaptive(lambda tok, r, ks: tok),
        "adaptive_by_input_token_and_rank": adaptive(lambda tok, r, ks: (tok, min(r, 3))),
        "adaptive_rank0_by_token_rest_by_top1": adaptive(
            lambda tok, r, ks: ("t", tok) if r == 0 else ("s", ks[0])),
    }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3000)
