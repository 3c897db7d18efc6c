"""The training data of one training run of :class:`~quantus_roar.retrain.TorchRetrainer`.

It takes one of two forms, each yielding an epoch's mini-batches as (M, B, ...)
inputs and (M, B) labels for the M models trained together:

- :class:`TensorGroup`: in-memory data of M jobs, stacked on the device;
- :class:`DatasetGroup`: one job (M == 1) whose data is a map-style torch Dataset,
  read through a DataLoader one mini-batch at a time and checked as it is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from quantus_roar.retrain._checks import _check_batch, _first_inputs, _to_tensor
from quantus_roar.retrain.base import RetrainJob

__all__ = ["Batches", "DatasetGroup", "Group", "TensorGroup", "batch_bounds"]

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]

# The validation split is drawn from the job's seed plus this offset.
_SPLIT_SEED_OFFSET = 7919


def batch_bounds(n: int, batch_size: int, merge_single: bool) -> list[tuple[int, int]]:
    """``(start, end)`` of one epoch's mini-batches; with ``merge_single`` a last mini-batch of
    one sample joins the one before it."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _split_order(n: int, seed: int) -> torch.Tensor:
    """The seeded permutation whose first entries are held out for validation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + _SPLIT_SEED_OFFSET))


@dataclass
class TensorGroup:
    """Models trained together on in-memory data, stacked on the device."""

    jobs: list[RetrainJob]
    x: torch.Tensor  # (M, N, ...) inputs, in the model's dtype
    y: torch.Tensor  # (M, N) int64 labels
    val: tuple[torch.Tensor, torch.Tensor] | None  # (M, V, ...) and (M, V); None: no split
    owner: str  # the public method, for errors
    names: list[str] | None = None  # the jobs as the caller knows them ("jobs[3]"), for errors

    @classmethod
    def stack(cls, jobs: list[RetrainJob], owner: str, device: torch.device,
              dtype: torch.dtype, validation_split: float) -> TensorGroup:
        """The jobs' training data on ``device``, ``validation_split`` of each held out."""
        xs, ys, vals = [], [], []
        for job in jobs:
            x = _to_tensor(job.x_train, device, dtype)
            y = _to_tensor(job.y_train, device, torch.long)
            n_val = round(validation_split * len(x))
            if n_val:
                perm = _split_order(len(x), job.seed).to(x.device)
                vals.append((x[perm[:n_val]], y[perm[:n_val]]))
                x, y = x[perm[n_val:]], y[perm[n_val:]]
            xs.append(x)
            ys.append(y)
        val = (torch.stack([xv for xv, _ in vals]), torch.stack([yv for _, yv in vals])) \
            if vals else None
        return cls(jobs, torch.stack(xs), torch.stack(ys), val, owner)

    @property
    def n(self) -> int:
        """Training samples per model."""
        return self.y.shape[1]

    def first_input(self) -> torch.Tensor:
        """The first training input, (1, ...)."""
        return self.x[0, :1]

    def batches(self, perms: torch.Tensor, bounds: list[tuple[int, int]]) -> Batches:
        """One epoch of mini-batches in the order of ``perms`` (M, N), cut at ``bounds``."""
        perms = perms.to(self.x.device)
        rows = torch.arange(len(self.jobs), device=self.x.device)[:, None]
        for start, end in bounds:
            idx = perms[:, start:end]
            yield self.x[rows, idx], self.y[rows, idx]

    def validation_sets(self) -> list[tuple[Any, Any]]:
        """``(x, y)`` held out for each model; empty without a validation split."""
        if self.val is None:
            return []
        x_val, y_val = self.val
        return [(x_val[i], y_val[i]) for i in range(len(self.jobs))]


@dataclass
class DatasetGroup:
    """One model trained on a map-style Dataset of (input, label) pairs."""

    jobs: list[RetrainJob]  # the one job
    dataset: Dataset  # its training part
    n: int  # training samples: len(dataset)
    val_dataset: Dataset | None  # its held-out part; None without a validation split
    owner: str  # the public method, for errors found in the Dataset's batches
    n_classes: int | None  # outputs of the model, for the labels read from the Dataset
    device: torch.device  # where the batches go
    dtype: torch.dtype  # the model's, which inputs are cast to
    num_workers: int  # DataLoader workers
    names: list[str] | None = None  # the job as the caller knows it ("jobs[3]"), for errors

    @classmethod
    def split(cls, job: RetrainJob, owner: str, n_classes: int | None, validation_split: float,
              device: torch.device, dtype: torch.dtype, num_workers: int) -> DatasetGroup:
        """The job's Dataset, ``validation_split`` of it held out as a Subset."""
        ds = job.x_train
        if job.y_train is not None:
            raise ValueError("TorchRetrainer: with a torch Dataset as training data, pass "
                             "y=None; the Dataset yields (input, label) pairs.")
        if len(ds) == 0:
            raise ValueError("TorchRetrainer got an empty training Dataset.")
        n_val = round(validation_split * len(ds))
        val = None
        if n_val:
            perm = _split_order(len(ds), job.seed).tolist()
            ds, val = Subset(ds, perm[n_val:]), Subset(ds, perm[:n_val])
        return cls([job], ds, len(ds), val, owner, n_classes, device, dtype, num_workers)

    def first_input(self) -> torch.Tensor:
        """The first training input, (1, ...)."""
        return _first_inputs(self.dataset, 1, self.owner, "x")

    def batches(self, perms: torch.Tensor, bounds: list[tuple[int, int]]) -> Batches:
        """One epoch of mini-batches (M == 1) read in the order of ``perms`` (1, N), cut at
        ``bounds``, each checked as it is read."""
        order = perms[0].tolist()
        positions = [order[start:end] for start, end in bounds]
        loader = DataLoader(self.dataset, batch_sampler=positions, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda")
        for k, ((xb, yb), where) in enumerate(zip(loader, positions, strict=True)):
            yb = _check_batch(xb, yb, self.n_classes, self.owner, "x",
                              f" in training batch {k} read from the Dataset", self.dataset,
                              where, self.dtype)
            yield (xb.to(self.device, self.dtype, non_blocking=True)[None],
                   yb.to(self.device, torch.long, non_blocking=True)[None])

    def validation_sets(self) -> list[tuple[Any, Any]]:
        """``(dataset, None)`` held out; empty without a validation split."""
        return [] if self.val_dataset is None else [(self.val_dataset, None)]


Group = TensorGroup | DatasetGroup
