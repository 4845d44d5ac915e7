"""The one data skeleton every task's builder is a thin wrapper of: a reader's records per split → train/val (or the
eval split) → limits → the task's Dataset → epoch-seeded batches with the task's collate → a :class:`DataBundle`.

A task's reader gives ``{split: records}`` (:mod:`mnv2.data.splits`); the task brings its Dataset
(``dataset(records, train=...)``: train augmentation or eval preprocessing) and its batches (a
:class:`LoaderBatches` with its collate). Choosing the parts, limiting, seeding and batching are written once here:
:func:`checked_train_val` and :func:`build_bundle` for training, :func:`eval_records` for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from mnv2.data.batches import LoaderBatches
from mnv2.data.folder import ScanReport
from mnv2.data.preprocessing import Preprocessing
from mnv2.data.splits import eval_split_name, limit_samples, train_val
from mnv2.errors import ConfigError

if TYPE_CHECKING:
    from mnv2.data.loaders import TensorBatches

R = TypeVar("R")
# (records, part) → the records of that part still readable (a reader that checks its files only when asked, as
# segmentation's label maps are); ``part`` names it in the progress bar
Scan = Callable[[list, str], list]


@dataclass
class DataBundle:
    """What training reads: train and val batches, class names, preprocessing, the read report."""

    train: TensorBatches | LoaderBatches
    val: TensorBatches | LoaderBatches
    class_names: list[str]
    preprocessing: Preprocessing
    report: ScanReport
    val_name: str  # which split the val numbers are on
    image_size: list[int] | None = None  # [height, width] shared by every val image (segmentation), else None


@dataclass
class TrainVal(Generic[R]):
    """A dataset read for training: class names, train and val records, the val split's name and the read report."""

    class_names: list[str]
    train: list[R]
    val: list[R]
    val_name: str
    report: ScanReport


def checked_train_val(
    splits: Mapping[str, Any], val_split: float, seed: int, data: object, *, take: Callable[[Any], list] = list,
    scan: Scan | None = None,
) -> tuple[list, list, str]:  # fmt: skip
    """``(train, val, val name)`` of a reader's ``splits`` (:func:`mnv2.data.splits.train_val`), each part passed
    through ``scan`` when given; a part left without records is an error."""
    train, val, val_name = train_val(splits, val_split, seed, data, take=take)
    if scan is not None:
        train, val = scan(train, "train"), scan(val, val_name)
    if not train:
        raise ConfigError(f"{str(data)!r} has no readable training images")
    if not val:
        raise ConfigError(f"{str(data)!r} has no readable validation images")
    return train, val, val_name


def build_bundle(
    read: TrainVal, dataset: Callable[..., Any], pre: Preprocessing, batch_size: int, eval_batch_size: int,
    *, batches: Callable[..., LoaderBatches] = LoaderBatches, workers: int = 2, seed: int = 0, rank: int = 0,
    world: int = 1, pin: bool = False, train_limit: int | None = None, val_limit: int | None = None,
    image_size: Callable[[list], list[int] | None] | None = None,
) -> DataBundle:  # fmt: skip
    """Train and val batches of ``read``: each part cut to a seeded sample of at most ``train_limit`` /
    ``val_limit`` records (in drawn order, :func:`mnv2.data.splits.limit_samples`), made a dataset by
    ``dataset(records, train=...)`` (train augmentation, else eval preprocessing) and batched by ``batches`` (the
    task's :class:`LoaderBatches`, with its collate): train shuffled, val in order. ``image_size``: the val
    records' shared ``[height, width]``, for a task that has one."""
    train = limit_samples(read.train, train_limit, seed, keep_order=False)
    val = limit_samples(read.val, val_limit, seed, keep_order=False)
    train_b = batches(dataset(train, train=True), batch_size, True, workers, seed, rank, world, pin)
    val_b = batches(dataset(val, train=False), eval_batch_size, False, workers, seed, rank, world, pin)
    size = image_size(val) if image_size is not None else None
    return DataBundle(train_b, val_b, read.class_names, pre, read.report, read.val_name, size)


def eval_records(
    splits: Mapping[str, Any], split: str | None, data: object, *, limit: int | None = None, seed: int = 0,
    take: Callable[[Any], list] = list, scan: Scan | None = None,
) -> tuple[str, list]:  # fmt: skip
    """``(split, records)`` evaluation reads: ``split``, else the data's validation split, else ``"all"``
    (:func:`mnv2.data.splits.eval_split_name`), as a seeded sample of at most ``limit`` records in their order, then
    through ``scan`` (so only the sample is checked). A split without (readable) records is an error."""
    split = eval_split_name(splits, split, data)
    records = take(splits[split])
    if records:
        records = limit_samples(records, limit, seed)
        if scan is None:
            return split, records
        records = scan(records, split)  # it may find every sampled image unreadable
    if not records:
        raise ConfigError(f"no readable images in {str(data)!r} ({split} split)")
    return split, records
