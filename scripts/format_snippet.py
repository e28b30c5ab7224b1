"""FORMAT.md's reference decoder, loaded from the document itself, for the scripts that check
or use datasets from Python (so every one of them runs the snippet exactly as published)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def teacher_logprobs_fn():
    """The `teacher_logprobs` function of the block under 'Recovering teacher log-probs'."""
    text = (ROOT / "schemas" / "FORMAT.md").read_text()
    m = re.search(r"## Recovering teacher log-probs.*?```python\n(.*?)```", text, re.S)
    if not m:
        raise SystemExit("FORMAT.md has no python snippet under 'Recovering teacher log-probs'")
    ns = {}
    exec(m.group(1), ns)
    return ns["teacher_logprobs"]
