"""Split policy shared by every task: what a dataset's parts are called, the seeded train/val split and sample limits.

A dataset reader returns ``{split name: records}`` with every split its layout defines (image folders, list files,
annotation files), or ``{"all": records}`` when it defines none. Training takes a train split (:data:`TRAIN_NAMES`)
and a validation split (:data:`VAL_NAMES`, in order of preference), or a seeded fraction of its train split (or of
``"all"``) as val; evaluation takes the split it is asked for, else the first validation split, else ``"all"``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

from mnv2.errors import ConfigError

T = TypeVar("T")

ALL = "all"  # the one split of a dataset that defines none
TRAIN_NAMES = ("train", "trainval")
# A held-out split goes by any of these names; with no val split, a test split stands in for it (as image folders
# with train/ and test/ always did), and evaluation defaults to it.
VAL_NAMES = ("val", "valid", "validation", "test")


def train_split_name(names: Sequence[str] | Mapping[str, object]) -> str | None:
    """The first of :data:`TRAIN_NAMES` among ``names``, else ``None``."""
    return next((n for n in TRAIN_NAMES if n in names), None)


def val_split_name(names: Sequence[str] | Mapping[str, object]) -> str | None:
    """The first of :data:`VAL_NAMES` among ``names``, else ``None``."""
    return next((n for n in VAL_NAMES if n in names), None)


def seeded_split(
    items: Sequence[T], fraction: float, seed: int, key: Callable[[T], Hashable] | None = None
) -> tuple[list[T], list[T]]:
    """``(train, val)``: ``items`` shuffled by ``random.Random(seed)``, the first ``round(len * fraction)`` (at least
    one, none of a single item) as val. With ``key`` the split is stratified: each group (in sorted key order, one
    generator for all) is split by the same rule, so every group with two or more items is in both parts."""
    rng = random.Random(seed)
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item) if key is not None else None, []).append(item)
    train: list[T] = []
    val: list[T] = []
    for k in sorted(groups) if key is not None else groups:
        own = groups[k]
        rng.shuffle(own)
        n_val = max(1, round(len(own) * fraction)) if len(own) > 1 else 0
        train += own[n_val:]
        val += own[:n_val]
    return train, val


def limit_samples(items: Sequence[T], limit: int | None, seed: int, *, keep_order: bool = True) -> list[T]:
    """A seeded random subset of at most ``limit`` items (``None``: all of them). ``keep_order=False`` returns the
    sample in drawn order, shuffled even when nothing is left out: what training's ``--train-limit`` and
    ``--val-limit`` have always given, so a limited run repeats its batches. The same items are drawn either way."""
    if limit is None:
        return list(items)
    if not keep_order:
        return random.Random(seed).sample(list(items), min(limit, len(items)))
    if limit >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [x for i, x in enumerate(items) if i in keep]


def train_val(
    splits: Mapping[str, T], val_split: float, seed: int, data: object, take: Callable[[T], list] = list
) -> tuple[list, list, str]:
    """``(train, val, val name)`` of a reader's ``splits``: a train split and a validation split, else a seeded
    ``val_split`` fraction of the train split (or of ``"all"``) as ``"val"``. ``take`` turns a split's value into
    its records (a reader may keep a broken split as its error, raised only when the split is used)."""
    train_name = train_split_name(splits) or (ALL if ALL in splits else None)
    if train_name is None:
        raise ConfigError(f"{str(data)!r} has no training split ({' or '.join(TRAIN_NAMES)}; it has: "
                          f"{', '.join(splits) or 'none'})")  # fmt: skip
    val_name = val_split_name(splits) if train_name != ALL else None
    if val_name is not None:
        return take(splits[train_name]), take(splits[val_name]), val_name
    train, val = seeded_split(take(splits[train_name]), val_split, seed)
    return train, val, "val"


def eval_split_name(splits: Mapping[str, object], split: str | None, data: object) -> str:
    """The split evaluation reads: ``split`` (which ``splits`` must have), else the first validation split, else
    ``"all"``."""
    if split is None:
        split = val_split_name(splits) or (ALL if ALL in splits else None)
        if split is None:
            raise ConfigError(f"{str(data)!r} has no validation split; name one with --split ({', '.join(splits)})")
    if split not in splits:
        raise ConfigError(f"{str(data)!r} has no {split!r} split (it has: {', '.join(splits) or 'none'})")
    return split
