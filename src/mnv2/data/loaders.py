"""Batches for the engine: an in-memory tensor dataset (Fashion-MNIST) with batched augmentation, or image
folders through DataLoader workers. Both are re-seeded per epoch, so an epoch's order and augmentation depend only
on (seed, epoch): a resumed run sees exactly the batches an uninterrupted one would have. Under
torch.distributed each rank takes every world-th sample of the same permutation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from mnv2.data import fashion_mnist
from mnv2.data.batches import LoaderBatches, epoch_seed
from mnv2.data.builder import DataBundle, TrainVal, build_bundle
from mnv2.data.fashion_mnist import DatasetError
from mnv2.data.folder import ImageFolderDataset, ScanReport, folder_splits
from mnv2.data.images import eval_image
from mnv2.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mnv2.data.splits import limit_samples
from mnv2.data.tensors import normalize
from mnv2.data.transforms import AugmentConfig, BatchAugment, ImageTrainTransform
from mnv2.errors import ConfigError


class TensorBatches:
    """Batches of an in-memory uint8 ``[N, C, H, W]`` tensor, augmented and normalised a whole batch at a time."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        augment: BatchAugment,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.images, self.labels, self.augment = images, labels, augment
        self.batch_size, self.shuffle, self.seed, self.rank, self.world = batch_size, shuffle, seed, rank, world

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n = math.ceil(self.num_samples / self.world)
        return n // self.batch_size if self.shuffle else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            torch.manual_seed(epoch_seed(self.seed, epoch))  # kornia draws from the global RNG
            order = torch.randperm(self.num_samples)
        else:
            order = torch.arange(self.num_samples)
        order = order[self.rank :: self.world]
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            with torch.no_grad():
                x = self.augment(self.images[idx])
            yield x, self.labels[idx]  # outside no_grad: a suspended generator would leak the grad mode


def fashion_preprocessing(resolution: int) -> Preprocessing:
    """28x28 images are resized (bilinear) to ``resolution``; nothing is cropped at eval."""
    m, s = fashion_mnist.MEAN, fashion_mnist.STD
    return Preprocessing(
        input_size=resolution, crop_pct=1.0, interpolation="bilinear", mean=(m,) * 3, std=(s,) * 3, grayscale=True
    )


def folder_preprocessing(resolution: int) -> Preprocessing:
    return Preprocessing(input_size=resolution, crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, H, W]`` uint8 → ``[N, 1, size, size]`` uint8, bilinear (as PIL's upscaling of the same image)."""
    x = images[:, None]
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = torch.empty(len(x), 1, size, size, dtype=torch.uint8)
    for i in range(0, len(x), 4096):
        y = F.interpolate(x[i : i + 4096].float(), size=(size, size), mode="bilinear", align_corners=False)
        out[i : i + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def build_data(
    data: str,
    preprocessing: Preprocessing,
    augment: AugmentConfig,
    batch_size: int,
    eval_batch_size: int,
    *,
    data_root: str | None = None,
    val_split: float = 0.1,
    strict: bool = False,
    workers: int = 2,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    pin: bool = False,
    train_limit: int | None = None,
    val_limit: int | None = None,
) -> DataBundle:
    """Train and val batches of ``data``: ``"fashion-mnist"`` (val = the official test split) or an image folder."""
    if data == fashion_mnist.NAME:
        size = preprocessing.input_size
        tr_x, tr_y = fashion_mnist.load_fashion_mnist("train", data_root)
        te_x, te_y = fashion_mnist.load_fashion_mnist("test", data_root)
        tr_x, tr_y, te_x, te_y = tr_x[:train_limit], tr_y[:train_limit], te_x[:val_limit], te_y[:val_limit]
        train = TensorBatches(
            resize_uint8(tr_x, size), tr_y, batch_size, BatchAugment(preprocessing, augment), True, seed, rank, world
        )
        val = TensorBatches(
            resize_uint8(te_x, size), te_y, eval_batch_size, BatchAugment(preprocessing, None), False, seed, rank, world
        )
        return DataBundle(train, val, list(fashion_mnist.CLASS_NAMES), preprocessing, ScanReport(), "test")
    classes, tr, va, val_name, report = folder_splits(data, val_split, seed, strict)
    if len(classes) < 2:
        raise DatasetError(
            f"{str(data)!r} has {len(classes)} class folder ({', '.join(classes)}): a classifier needs at least 2 "
            "classes (one class would always score 100%)"
        )
    # limits draw a seeded sample, so a limit keeps every class (the lists are class-sorted)
    return build_bundle(
        TrainVal(classes, tr, va, val_name, report), folder_dataset(preprocessing, augment), preprocessing, batch_size,
        eval_batch_size, workers=workers, seed=seed, rank=rank, world=world, pin=pin, train_limit=train_limit,
        val_limit=val_limit,
    )  # fmt: skip


def eval_tensor(image, preprocessing: Preprocessing) -> torch.Tensor:
    """The eval resize and centre crop of a PIL image, as a CHW tensor."""
    return torch.from_numpy(eval_image(image, preprocessing))


def folder_dataset(
    preprocessing: Preprocessing, augment: AugmentConfig | None = None
) -> Callable[..., ImageFolderDataset]:
    """``(samples, train=...)`` → an :class:`ImageFolderDataset`: ``augment``'s train transform, else the eval
    resize and centre crop. Both transforms pickle: worker processes start from a fork server and are sent the
    dataset (``mnv2.data.batches.worker_start_method``)."""

    def dataset(samples: list[tuple[str, int]], train: bool) -> ImageFolderDataset:
        if train:
            return ImageFolderDataset(samples, ImageTrainTransform(preprocessing, augment))
        return ImageFolderDataset(samples, functools.partial(eval_tensor, preprocessing=preprocessing))

    return dataset


class ArrayBatches:
    """Batches of an already-decoded array set (``.npz``), in order; the same ``epoch()`` API as the others."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, self.num_samples, self.batch_size):
            yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]


def load_npz(path, preprocessing: Preprocessing, in_chans: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``.npz`` with ``x`` and integer labels ``y``; ``x`` is uint8 NHWC (or NHW) images already at the input
    size, normalised here as ``preprocessing`` says, or a preprocessed float NCHW array used as is."""
    import numpy as np

    try:
        f = np.load(path, allow_pickle=False)  # never unpickle: object arrays raise
    except (OSError, ValueError) as e:
        raise ConfigError(f"{str(path)!r} is not a readable .npz file ({e})") from e
    with f:
        if "x" not in f or "y" not in f:
            raise ConfigError(f"{str(path)!r} must hold arrays 'x' and 'y' (found {', '.join(f.files)})")
        x, y = f["x"], f["y"]
    if len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{str(path)!r}: 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    size = preprocessing.input_size
    if x.dtype == np.uint8:
        x = torch.from_numpy(x if x.ndim == 4 else x[..., None]).permute(0, 3, 1, 2)
        if tuple(x.shape[2:]) != (size, size):
            raise ConfigError(
                f"{str(path)!r}: uint8 images are {x.shape[2]}x{x.shape[3]}, the model takes {size}x{size}"
            )
        if x.shape[1] == 1 and in_chans > 1:
            x = x.expand(-1, in_chans, -1, -1)  # grayscale expanded to the model's channels (Preprocessing doc)
        x = normalize(x.float().div_(255), preprocessing)
    elif x.ndim == 4 and x.shape[1] == in_chans and np.issubdtype(x.dtype, np.floating):
        x = torch.from_numpy(x.astype(np.float32))
    else:
        raise ConfigError(f"{str(path)!r}: 'x' must be uint8 NHWC images or preprocessed float NCHW ({in_chans} ch)")
    return x.contiguous(), torch.from_numpy(y.astype(np.int64))


def build_eval_data(
    data: str,
    preprocessing: Preprocessing,
    batch_size: int,
    *,
    split: str | None = None,
    workers: int = 2,
    strict: bool = False,
    limit: int | None = None,
    seed: int = 0,
    in_chans: int = 3,
    **_,
):
    """Eval batches, class names and the scan report of ``data``: ``fashion-mnist`` (its test split by default),
    an ``.npz`` of arrays (class names ``None``), or an image folder (``split``, else the part training validates
    on, else every image). ``limit``: a seeded random subset of at most that many images (every class in
    expectation)."""
    from pathlib import Path

    from mnv2.data.folder import scan_folder, val_folder

    def subset(n: int) -> torch.Tensor | None:
        if limit is None or limit >= n:
            return None
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values

    if data == fashion_mnist.NAME:
        split = split or "test"
        x, y = fashion_mnist.load_fashion_mnist(split)
        if (idx := subset(len(y))) is not None:
            x, y = x[idx], y[idx]
        return (
            TensorBatches(
                resize_uint8(x, preprocessing.input_size), y, batch_size, BatchAugment(preprocessing, None), False
            ),
            list(fashion_mnist.CLASS_NAMES),
            ScanReport(),
        )
    if data.endswith(".npz"):
        if not Path(data).is_file():
            raise ConfigError(f"{data!r} does not exist")
        x, y = load_npz(data, preprocessing, in_chans)
        if (idx := subset(len(y))) is not None:
            x, y = x[idx], y[idx]
        return ArrayBatches(x, y, batch_size), None, ScanReport()
    root = Path(data)
    report = ScanReport()
    if split is not None:
        root = root / split
    else:  # the folder training validates on (mnv2.data.folder.folder_splits), else every image
        root = val_folder(root) or root
    classes, samples = scan_folder(root, strict, report)
    samples = limit_samples(samples, limit, seed)
    dataset = folder_dataset(preprocessing)(samples, train=False)
    return LoaderBatches(dataset, batch_size, False, workers), classes, report
