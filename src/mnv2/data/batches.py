"""Epoch-seeded batches through DataLoader workers, shared by every task's data (no augmentation library here, so
inference paths that read data import nothing of training).

An epoch's order and augmentation depend only on (seed, epoch): a resumed run sees exactly the batches an
uninterrupted one would have. Under torch.distributed each rank takes every world-th sample of the same permutation.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mnv2.errors import ConfigError


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


# what the fork server imports once, so a worker forked from it need not (about a second of CPU for each worker of
# each loader of each epoch)
FORKSERVER_PRELOAD = ["torch", "mnv2.data.detection", "mnv2.data.segmentation", "mnv2.data.folder",
                      "mnv2.data.transforms"]  # fmt: skip


def worker_start_method(workers: int) -> str | None:
    """How DataLoader workers start: from a fork server where there is one, not by forking the training process.
    Workers are made afresh each epoch (their seeds are the epoch's), and a fork of a process holding gigabytes of
    activations makes every page the training step then writes a copy-on-write fault while the workers live:
    measured on a raccoon SSDLite run, 45 % of its CPU time in the kernel (BENCHMARKS.md, "Data loader workers").
    ``MNV2_WORKER_START`` (fork, spawn, forkserver) overrides it, for measurements."""
    if workers == 0:
        return None
    methods = multiprocessing.get_all_start_methods()
    chosen = os.environ.get("MNV2_WORKER_START") or ("forkserver" if "forkserver" in methods else None)
    if chosen is not None and chosen not in methods:
        raise ConfigError(f"MNV2_WORKER_START must be one of {', '.join(methods)}; got {chosen!r}")
    if chosen == "forkserver":
        multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
    return chosen


class LoaderBatches:
    """Batches of a map-style dataset through DataLoader worker processes (pinned when a GPU is used).

    ``collate_fn``: how samples become a batch (default stacking; detection keeps its box lists as lists).
    ``own_rng``: with ``workers=0`` the dataset's augmentation draws from torch's global RNG; give it its own stream
    seeded by (seed, epoch) instead, so the batches depend on nothing else and the model's draws (dropout) are
    untouched. Off for classification, whose in-process folder runs have always drawn from the global stream.
    """

    def __init__(
        self, dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0, rank: int = 0, world: int = 1,
        pin: bool = False, *, collate_fn: Callable[[list], Any] | None = None, own_rng: bool = False,
    ) -> None:  # fmt: skip
        self.dataset, self.batch_size, self.shuffle, self.workers = dataset, batch_size, shuffle, workers
        self.seed, self.rank, self.world, self.pin = seed, rank, world, pin
        self.collate_fn, self.own_rng = collate_fn, own_rng

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n = math.ceil(self.num_samples / self.world)
        return n // self.batch_size if self.shuffle and n >= self.batch_size else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, Any]]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        subset = torch.utils.data.Subset(self.dataset, order[self.rank :: self.world].tolist())
        loader = torch.utils.data.DataLoader(
            subset,
            batch_size=self.batch_size,
            shuffle=False,
            drop_last=self.shuffle and len(subset) >= self.batch_size,
            num_workers=self.workers,
            generator=g,  # workers' seeds (and so their augmentation draws) derive from it
            pin_memory=self.pin,
            collate_fn=self.collate_fn,
            persistent_workers=False,
            multiprocessing_context=worker_start_method(self.workers),
        )
        if self.workers > 0 or not self.own_rng:
            for x, y in loader:
                yield x.contiguous(memory_format=torch.channels_last), y
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(self.seed, epoch) + 7919)
            state = torch.get_rng_state()
        batches = iter(loader)
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                batch = next(batches, None)
                state = torch.get_rng_state()
            if batch is None:
                return
            yield batch[0].contiguous(memory_format=torch.channels_last), batch[1]
