"""PyTorch side of `logits`: an IterableDataset over a dataset's shards and the KD losses.

The losses follow the Rust trainer's conventions exactly (crates/logits-student/src/losses/
response.rs, ../shared/KD-REFERENCE.md) and are checked against the same golden values
(fixtures/golden/kd_response.json, written by scripts/kd_reference.py) by the test command:

- forward KL (Hinton): T² · KL(P‖Q); reverse KL: KL(Q‖P); generalised JSD with weight β on P:
  β·KL(P‖M) + (1−β)·KL(Q‖M), M = βP + (1−β)Q; reverse KL and JSD are not scaled by T².
- top-k handling: "tail" gives both sides one extra class holding the mass of every id not
  kept (the teacher's is exact, from the stored logZ); "renormalize" renormalises both over
  the kept ids.
- RS-KD sampled targets: T² · cross-entropy of softmax(s/T) against counts / draws.
- reduction "batchmean": the mean over positions whose `mask` is true (all by default).

    from logits.torch import DistillationDataset, kd_loss
    data = DistillationDataset("data/digits", batch_size=64, split="train", temperature=4.0)
    for b in torch.utils.data.DataLoader(data, batch_size=None, num_workers=2):
        loss = kd_loss(model(b["inputs"]["pixels"]), b["topk_ids"], b["teacher_logprobs"],
                       temperature=4.0)
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from . import Batch, Dataset

__all__ = ["DistillationDataset", "kd_loss", "sampled_kd_loss", "batch_to_torch"]

_LOG_TINY = math.log(1e-30)  # the Rust losses' floor on probabilities (TINY = 1e-30)


def _part(worker: Optional[int], workers: int, rank: int, world: int):
    """This reader's part of the shards: one per (rank, worker) pair."""
    n = max(1, workers) * max(1, world)
    i = rank * max(1, workers) + (worker or 0)
    return None if n == 1 else (i, n)


def _rank_world():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def batch_to_torch(b: Batch, temperature: Optional[float] = None) -> Dict[str, object]:
    """A decoded batch as a dict of tensors (see `DistillationDataset` for the keys)."""
    out: Dict[str, object] = {"row_id": torch.from_numpy(b.row_id.astype(np.int64))}
    if b.label is not None:
        out["label"] = torch.from_numpy(b.label.copy())
    if b.row_positions is not None:
        out["row_positions"] = torch.from_numpy(b.row_positions.copy())
    if b.topk_ids is not None:
        out["topk_ids"] = torch.from_numpy(b.topk_ids)
        out["topk_logits"] = torch.from_numpy(b.topk_logits)
        if temperature is not None:
            out["teacher_logprobs"] = torch.from_numpy(b.log_probs(temperature))
            out["teacher_tail"] = torch.from_numpy(b.tail(temperature))
    if b.logz is not None:
        out["logz"] = torch.from_numpy(b.logz.copy())
    if b.sampled_ids is not None:
        out["sampled_ids"] = torch.from_numpy(b.sampled_ids)
        out["sampled_counts"] = torch.from_numpy(b.sampled_counts)
    out["features"] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.features.items()}
    out["inputs"] = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                         else [torch.from_numpy(np.ascontiguousarray(r)) for r in v])
                     for k, v in b.inputs.items()}
    return out


class DistillationDataset(torch.utils.data.IterableDataset):
    """Batches of a `logits` dataset as tensors, for `DataLoader(data, batch_size=None)`.

    Each DataLoader worker and each distributed rank (torch.distributed when initialised, else
    the RANK / WORLD_SIZE environment variables) reads its own shards: shard j goes to reader
    j mod (ranks × workers), so every row is read once per epoch across them (give the
    dataset at least that many shards: `logits-build --rows-per-shard`). Batches are already
    formed (`batch_size` rows each; the last of each reader's part may be smaller).

    Keys: row_id, label (-1 unknown), row_positions, topk_ids [P, k], topk_logits, logz
    [P, |T|], and with `temperature` teacher_logprobs [P, k] (float64, -inf padding) and
    teacher_tail [P]; sampled_ids/sampled_counts (RS-KD); features {name: [P, ...]};
    inputs {name: [rows, ...]}.
    """

    def __init__(self, path: str, batch_size: int = 256, split: Optional[str] = None,
                 temperature: Optional[float] = 1.0, shuffle: Optional[int] = None,
                 columns: Optional[Sequence[str]] = None):
        super().__init__()
        self.path = str(path)
        self.batch_size = batch_size
        self.split = split
        self.temperature = temperature
        self.shuffle = shuffle
        self.columns = columns
        self.epoch = 0
        ds = Dataset(self.path)  # opened here too, so a bad path fails before any worker starts
        if temperature is not None and ds.temperatures and ds.manifest.get("targets"):
            from . import _temperature_index
            _temperature_index(ds.temperatures, temperature)
        ds.split_range(split)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffles differently each epoch (the seed is `shuffle + epoch`)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Dict[str, object]]:
        info = torch.utils.data.get_worker_info()
        rank, world = _rank_world()
        part = _part(info.id if info else None, info.num_workers if info else 1, rank, world)
        ds = Dataset(self.path)
        seed = None if self.shuffle is None else self.shuffle + self.epoch
        for b in ds.batches(self.batch_size, split=self.split, columns=self.columns,
                            shuffle=seed, part=part):
            yield batch_to_torch(b, self.temperature)


def _logsumexp_except(z: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log Σ_{m not in ids} exp(z_m), per row (padded ids ignored)."""
    pad = torch.full_like(z[:, :1], -math.inf)
    ext = torch.cat([z, pad], dim=1)
    idx = torch.where(valid, ids, torch.full_like(ids, z.shape[1]))
    return ext.scatter(1, idx, -math.inf).logsumexp(dim=1)


def _kl(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """Σ a (log a − log b) over the last axis from log-probabilities, with 0 · log 0 = 0."""
    keep = la > -math.inf
    la_s = torch.where(keep, la, torch.zeros_like(la))
    lb_s = torch.where(keep, lb, torch.zeros_like(lb))
    return torch.where(keep, la_s.exp() * (la_s - lb_s), torch.zeros_like(la)).sum(dim=-1)


def kd_loss(student_logits: torch.Tensor, topk_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
            temperature: float = 1.0, divergence: str = "forward_kl", topk: str = "tail",
            jsd_beta: float = 0.5, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The response KD loss from top-k targets, "batchmean" over positions.

    student_logits [P, V]; topk_ids [P, k] (int64); teacher_logprobs [P, k], the exact teacher
    log-probs at `temperature` (`Batch.log_probs(T)`; -inf marks padding); divergence
    "forward_kl" | "reverse_kl" | "jsd"; topk "tail" | "renormalize"; mask [P] (bool) selects
    the positions that count.
    """
    if divergence not in ("forward_kl", "reverse_kl", "jsd"):
        raise ValueError(f"unknown divergence {divergence!r}: forward_kl, reverse_kl or jsd")
    if topk not in ("tail", "renormalize"):
        raise ValueError(f"unknown top-k mode {topk!r}: tail or renormalize")
    z = student_logits.to(torch.float64) / temperature
    lt = teacher_logprobs.to(torch.float64)
    valid = lt > -math.inf
    ids = topk_ids.to(torch.int64)
    lse = z.logsumexp(dim=1, keepdim=True)
    lq = torch.where(valid, z.gather(1, torch.where(valid, ids, torch.zeros_like(ids))) - lse,
                     torch.full_like(lt, -math.inf))
    if topk == "tail":
        p_rest = (1.0 - lt.exp().sum(dim=1)).clamp(min=0.0)
        lp_rest = torch.where(p_rest > 0, p_rest.clamp(min=1e-300).log(), torch.full_like(p_rest, -math.inf))
        lq_rest = (_logsumexp_except(z, ids, valid) - lse[:, 0]).clamp(min=_LOG_TINY)
        lp = torch.cat([lt, lp_rest[:, None]], dim=1)
        lqb = torch.cat([lq, lq_rest[:, None]], dim=1)
    else:
        lp = lt - lt.logsumexp(dim=1, keepdim=True)
        lqb = torch.where(valid, (lq - lq.logsumexp(dim=1, keepdim=True)).clamp(min=_LOG_TINY), lq)
    if divergence == "forward_kl" or (divergence == "jsd" and jsd_beta == 0.0):
        per = _kl(lp, lqb) * (temperature ** 2 if divergence == "forward_kl" else 1.0)
    elif divergence == "reverse_kl" or (divergence == "jsd" and jsd_beta == 1.0):
        per = _kl(lqb, lp.clamp(min=_LOG_TINY))
    else:
        b = float(jsd_beta)
        lm = torch.logaddexp(lp + math.log(b), lqb + math.log(1.0 - b))
        per = b * _kl(lp, lm) + (1.0 - b) * _kl(lqb, lm)
    return _batchmean(per, mask)


def sampled_kd_loss(student_logits: torch.Tensor, sampled_ids: torch.Tensor,
                    sampled_counts: torch.Tensor, temperature: float = 1.0,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RS-KD: T² · cross-entropy of softmax(s/T) against counts / draws, batchmean."""
    z = student_logits.to(torch.float64) / temperature
    lq = z.log_softmax(dim=1).gather(1, sampled_ids.to(torch.int64)).clamp(min=_LOG_TINY)
    c = sampled_counts.to(torch.float64)
    pi = c / c.sum(dim=1, keepdim=True).clamp(min=1.0)
    per = -(pi * lq).sum(dim=1) * temperature ** 2
    return _batchmean(per, mask)


def _batchmean(per: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return per.mean()
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp(min=1.0)
