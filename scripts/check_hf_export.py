#!/usr/bin/env python3
"""Loads a language-model student's Hugging Face directory (`RUN/hf`, written by
`logits-train`) with `transformers` exactly as a user would — AutoModelForCausalLM and
AutoTokenizer from the directory, nothing from this project — and compares its logits with
the run's `student.onnx` in ONNX Runtime on the same token ids and attention mask (right
padding included), over every length up to the context.

Needs torch and transformers (outside CI: `PY=$(LOGITS_VENV=.cache/venv-zoo scripts/pyenv.sh
scripts/requirements-zoo.txt)`). Usage: $PY scripts/check_hf_export.py RUN_DIR
Prints one JSON line and exits non-zero when the largest difference is above 1e-4.
"""
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    run = pathlib.Path(sys.argv[1])
    hf = run / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    sess = ort.InferenceSession(str(run / "student.onnx"), providers=["CPUExecutionProvider"])
    cfg = model.config
    rng = np.random.default_rng(0)
    worst = 0.0
    lengths = sorted({1, 2, cfg.n_positions // 2, cfg.n_positions})
    for n in lengths:
        ids = rng.integers(0, cfg.vocab_size, (3, n)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, n // 2 + 1:] = 0  # a right-padded row
        with torch.no_grad():
            got = model(input_ids=torch.from_numpy(ids),
                        attention_mask=torch.from_numpy(mask)).logits.numpy()
        want = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        keep = mask.astype(bool)  # padded positions' logits are not defined by either side
        d = np.abs(got - want)[keep] / np.maximum(1.0, np.abs(want)[keep])
        worst = max(worst, float(d.max()))
    out = {"transformers": transformers.__version__, "torch": torch.__version__,
           "lengths": lengths, "max_scaled_diff_vs_onnx": worst}
    if (hf / "tokenizer.json").exists():
        tok = AutoTokenizer.from_pretrained(hf)
        enc = tok("The module", return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=8, do_sample=False,
                             pad_token_id=cfg.eos_token_id)
        out["greedy"] = tok.decode(gen[0])
    print(json.dumps(out))
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
