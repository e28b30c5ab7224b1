"""Read `logits` knowledge-distillation datasets in Python.

The reading is done by the Rust library the command-line tools use (`logits._native`, over
`logits-format`): the same shard checks (sizes, sha256, the contract row by row) and the same
value decoding (f32, f16, bf16 and int8 step codes with their exact tail), so there is one
decoder. This module turns its batches into numpy arrays; `logits.torch` adds a PyTorch
`IterableDataset` and the distillation losses.

    import logits
    ds = logits.open("data/digits")            # a directory or s3://, gs://, az:// URL
    for b in ds.batches(256, split="train"):
        lp = b.log_probs(4.0)                  # [positions, k] teacher log-probs at T = 4
        tail = b.tail(4.0)                     # [positions] exact mass outside the kept ids

Conventions (schemas/FORMAT.md): a batch holds `rows` rows and `positions` target positions
(one per row for per-example targets, one per real token for per-token targets);
`row_positions[r]:row_positions[r + 1]` are row r's positions. Top-k entries are padded to
the dataset's largest k: ids with 0, logits and log-probs with -inf, so padded entries carry
no probability; `topk_count` says how many are real.
"""

from __future__ import annotations

import json
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native

__all__ = ["open", "Dataset", "Batch", "__version__"]
__version__ = _native.__version__


def _array(triple) -> np.ndarray:
    dtype, shape, buf = triple
    return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)


def _pad(offsets: np.ndarray, flat: np.ndarray, width: int, fill) -> Tuple[np.ndarray, np.ndarray]:
    """Ragged entries (`offsets`, `flat`) as a `[len(offsets) - 1, width]` array and counts."""
    counts = np.diff(offsets)
    out = np.full((len(counts), width), fill, dtype=flat.dtype)
    out[np.arange(width)[None, :] < counts[:, None]] = flat
    return out, counts


class Batch:
    """One decoded batch of rows, as numpy arrays.

    Attributes (present when the dataset stores them):
      row_id          uint64 [rows]
      label           int64 [rows], -1 where unknown
      row_positions   int64 [rows + 1]
      topk_ids        int64 [positions, k]   (padded with 0)
      topk_logits     float32 [positions, k] raw teacher logits (padded with -inf)
      topk_count      int64 [positions]
      logz            float32 [positions, len(temperatures)]: logZ at each stored temperature
      sampled_ids     int64 [positions, s], sampled_counts int64 [positions, s] (RS-KD; 0-padded)
      features        {name: float32 [positions or rows, *shape]}
      inputs          {name: array [rows, *shape]} when every row has the same shape, else a
                      list of per-row arrays
    """

    def __init__(self, raw: Dict[str, tuple], dataset: "Dataset"):
        a = {k: _array(v) for k, v in raw.items()}
        self.temperatures: List[float] = dataset.temperatures
        self.row_id: np.ndarray = a["row_id"]
        self.rows: int = len(self.row_id)
        self.label: Optional[np.ndarray] = a.get("label")
        self.row_positions: Optional[np.ndarray] = a.get("row_positions")
        self.topk_ids = self.topk_logits = self.topk_count = None
        self.logz: Optional[np.ndarray] = None
        self.sampled_ids = self.sampled_counts = None
        if "logz" in a:
            n = len(a["logz"])
            extra = a["logz_temps"].reshape(n, -1) if n else np.zeros((0, len(self.temperatures) - 1), np.float32)
            self.logz = np.concatenate([a["logz"][:, None], extra], axis=1)
        if "topk_ids" in a:
            width = max(dataset.k, int(np.diff(a["topk_offsets"]).max(initial=0)))
            ids, self.topk_count = _pad(a["topk_offsets"], a["topk_ids"].astype(np.int64), width, 0)
            self.topk_ids = ids
            self.topk_logits, _ = _pad(a["topk_offsets"], a["topk_logits"], width, -np.inf)
        if "sampled_ids" in a:
            width = int(np.diff(a["sampled_offsets"]).max(initial=0))
            self.sampled_ids, _ = _pad(a["sampled_offsets"], a["sampled_ids"].astype(np.int64), width, 0)
            self.sampled_counts, _ = _pad(a["sampled_offsets"], a["sampled_counts"].astype(np.int64), width, 0)
        self.features: Dict[str, np.ndarray] = {}
        self._per_position: Dict[str, bool] = {}
        self._feature_positions: Dict[str, np.ndarray] = {}
        for f in dataset.manifest.get("features", []):
            key = "feature:" + f["name"]
            if key in a:
                self._per_position[f["name"]] = f["granularity"] == "position"
                self._feature_positions[f["name"]] = a["feature_positions:" + f["name"]]
                self.features[f["name"]] = a[key].reshape(-1, *f["shape"])
        self.inputs: Dict[str, Union[np.ndarray, List[np.ndarray]]] = {}
        for spec in dataset.manifest.get("inputs", []):
            key = "input:" + spec["name"]
            if key in a:
                self.inputs[spec["name"]] = _rows(a[key], a["input_offsets:" + spec["name"]], spec["shape"])

    def row(self, i: int) -> Dict[str, object]:
        """Row `i` of the batch as a dict: row_id, label, and per position topk_ids, topk_logits,
        logz, sampled_ids/sampled_counts (unpadded), features and inputs."""
        out: Dict[str, object] = {"row_id": int(self.row_id[i])}
        if self.label is not None:
            out["label"] = int(self.label[i])
        if self.row_positions is not None:
            p0, p1 = int(self.row_positions[i]), int(self.row_positions[i + 1])
            if self.topk_ids is not None:
                n = self.topk_count[p0:p1]
                out["topk_ids"] = [self.topk_ids[p, :c] for p, c in zip(range(p0, p1), n)]
                out["topk_logits"] = [self.topk_logits[p, :c] for p, c in zip(range(p0, p1), n)]
            out["logz"] = self.logz[p0:p1]
            if self.sampled_ids is not None:
                keep = [self.sampled_counts[p] > 0 for p in range(p0, p1)]
                out["sampled_ids"] = [self.sampled_ids[p][k] for p, k in zip(range(p0, p1), keep)]
                out["sampled_counts"] = [self.sampled_counts[p][k] for p, k in zip(range(p0, p1), keep)]
        # Per-position features are sliced like the targets; per-example ones (pooled) by row.
        out["features"] = {}
        for k, v in self.features.items():
            fp = self._feature_positions[k]
            out["features"][k] = v[int(fp[i]):int(fp[i + 1])] if self._per_position[k] else v[i]
        out["inputs"] = {k: v[i] for k, v in self.inputs.items()}
        return out

    @property
    def positions(self) -> int:
        """Number of target positions in the batch."""
        return 0 if self.logz is None else len(self.logz)

    def position_row(self) -> np.ndarray:
        """The row (index within the batch) of each position, int64 [positions]."""
        return np.repeat(np.arange(self.rows), np.diff(self.row_positions))

    def logz_at(self, temperature: float = 1.0) -> np.ndarray:
        """logZ_T per position, float64 [positions]; refuses a temperature that was not stored."""
        return self.logz[:, _temperature_index(self.temperatures, temperature)].astype(np.float64)

    def log_probs(self, temperature: float = 1.0) -> np.ndarray:
        """Exact teacher log-probs of the kept ids at T, float64 [positions, k] (-inf padding)."""
        lz = self.logz_at(temperature)
        with np.errstate(invalid="ignore"):
            return self.topk_logits.astype(np.float64) / temperature - lz[:, None]

    def tail(self, temperature: float = 1.0) -> np.ndarray:
        """Exact teacher mass outside the kept ids at T, float64 [positions], clamped to [0, 1]."""
        return np.clip(1.0 - np.exp(self.log_probs(temperature)).sum(axis=1), 0.0, 1.0)


def _rows(values: np.ndarray, offsets: np.ndarray, shape: Sequence) -> Union[np.ndarray, List[np.ndarray]]:
    lengths = np.diff(offsets)
    fixed = [d for d in shape if isinstance(d, int)]
    if len(fixed) == len(shape) and len(lengths) and (lengths == lengths[0]).all():
        return values.reshape(len(lengths), *fixed)
    rows = np.split(values, offsets[1:-1])
    if len(fixed) == len(shape) - 1:
        # One dimension varies per row: solve it from the row's length.
        known = int(np.prod(fixed)) if fixed else 1
        dims = lambda n: [n // known if not isinstance(d, int) else d for d in shape]
        rows = [r.reshape(dims(len(r))) for r in rows]
    return rows


def _temperature_index(temperatures: List[float], t: float) -> int:
    for i, s in enumerate(temperatures):
        if abs(s - t) <= 1e-9 * max(1.0, abs(t)):
            return i
    raise ValueError(
        f"logZ at T={t:g} was not stored (stored: {', '.join(f'{s:g}' for s in temperatures)}); "
        "build with --temperatures to store it, or use one of these")


class Dataset:
    """An opened dataset: its manifest, splits and streams of batches."""

    def __init__(self, path: str):
        self.path = str(path)
        self._native = _native.NativeDataset(self.path)
        self.manifest: dict = json.loads(self._native.manifest_json())
        t = self.manifest.get("targets") or {}
        self.temperatures: List[float] = [1.0] + [float(x) for x in t.get("temperatures", [])]
        topk = t.get("topk") or {}
        rule = next(iter(topk.values()), {}) if topk else {}
        self.k: int = int(rule.get("k", rule.get("max_k", 0)))
        self.num_classes: int = int(t.get("axis_size", 0))
        self.per_token: bool = t.get("granularity") == "position"
        self.holdout_from: Optional[int] = (self.manifest.get("corpus") or {}).get("holdout_from")

    def __repr__(self) -> str:
        return (f"logits.Dataset({self.path!r}: {self.num_rows} rows, k={self.k}, "
                f"{self.num_classes} classes, T={self.temperatures})")

    @property
    def num_rows(self) -> int:
        """Rows in the dataset."""
        return int(self.manifest["totals"]["rows"])

    @property
    def num_shards(self) -> int:
        """Shards listed in the manifest (the unit that workers and ranks split)."""
        return len(self.manifest["shards"])

    @property
    def tokenizer(self) -> Optional[str]:
        """The path of the dataset's tokenizer.json copy, when it has one."""
        import os
        p = os.path.join(self.path, "tokenizer.json")
        return p if "://" not in self.path and os.path.exists(p) else None

    def split_range(self, split: Optional[str]) -> Optional[Tuple[int, int]]:
        """Row-id range of `split`: "train" (below --holdout-from), "test", or None (all)."""
        if split is None or split == "all":
            return None
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: use 'train', 'test' or None")
        h = self.holdout_from
        if h is None:
            if split == "train":
                return None
            raise ValueError(f"{self.path} has no held-out split (it was built without --holdout-from)")
        return (0, h) if split == "train" else (h, 2**64 - 1)

    def batches(self, batch_size: int = 256, split: Optional[str] = None,
                columns: Optional[Sequence[str]] = None, shuffle: Optional[int] = None,
                shuffle_buffer: int = 8192, part: Optional[Tuple[int, int]] = None) -> Iterator[Batch]:
        """Streams decoded batches.

        split: "train", "test" or None (every row). columns: shard columns to read (row_id is
        always read; default all). shuffle: a seed (shards, row groups and rows within a
        buffer of `shuffle_buffer` rows are shuffled) or None for row-id order.
        part: (i, n) reads only shards i, i + n, ... (one part per worker or rank).
        """
        stream = self._native.stream(batch_size, list(columns) if columns is not None else None,
                                     shuffle, shuffle_buffer, self.split_range(split), part)
        try:
            for raw in stream:
                yield Batch(raw, self)
        finally:
            stream.close()

    def rows(self, split: Optional[str] = None, **kwargs) -> Iterator[Dict[str, object]]:
        """Streams single rows as dicts (`Batch.row`); keyword arguments as `batches`."""
        for b in self.batches(split=split, **kwargs):
            for i in range(b.rows):
                yield b.row(i)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()


def open(path: str) -> Dataset:  # noqa: A001 - the natural name, as io.open
    """Opens the dataset at a directory or object-store URL."""
    return Dataset(path)
