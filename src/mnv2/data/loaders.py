"""Batches for the engine: an in-memory tensor dataset (Fashion-MNIST) with batched augmentation, or image
folders through DataLoader workers. Both are re-seeded per epoch, so an epoch's order and augmentation depend only
on (seed, epoch): a resumed run sees exactly the batches an uninterrupted one would have. Under
torch.distributed each rank takes every world-th sample of the same permutation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mnv2.data import fashion_mnist
from mnv2.data.folder import ImageFolderDataset, ScanReport, folder_splits
from mnv2.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mnv2.data.transforms import AugmentConfig, BatchAugment, ImageTrainTransform, eval_image

BUILTIN = (fashion_mnist.NAME,)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


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


class LoaderBatches:
    """Batches of an image-folder dataset through DataLoader worker processes (pinned when a GPU is used)."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool,
        workers: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        pin: bool = False,
    ):
        self.dataset, self.batch_size, self.shuffle, self.workers = dataset, batch_size, shuffle, workers
        self.seed, self.rank, self.world, self.pin = seed, rank, world, pin

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n = math.ceil(self.num_samples / self.world)
        return n // self.batch_size if self.shuffle and n >= self.batch_size else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        subset = torch.utils.data.Subset(self.dataset, order[self.rank :: self.world].tolist())
        loader = torch.utils.data.DataLoader(
            subset,
            batch_size=self.batch_size,
            shuffle=False,
            drop_last=self.shuffle and len(subset) >= self.batch_size,
            num_workers=self.workers,
            generator=g,  # workers' seeds (and so kornia's draws in them) derive from it
            pin_memory=self.pin,
            persistent_workers=False,
        )
        for x, y in loader:
            yield x.contiguous(memory_format=torch.channels_last), y


@dataclass
class DataBundle:
    train: TensorBatches | LoaderBatches
    val: TensorBatches | LoaderBatches
    class_names: list[str]
    preprocessing: Preprocessing
    report: ScanReport
    val_name: str  # which split the val numbers are on


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
    classes, tr, va, report = folder_splits(data, val_split, seed, strict)
    if train_limit is not None:  # a seeded sample, so a limit keeps every class (the lists are class-sorted)
        tr = random.Random(seed).sample(tr, min(train_limit, len(tr)))
    if val_limit is not None:
        va = random.Random(seed).sample(va, min(val_limit, len(va)))
    train_ds = ImageFolderDataset(tr, ImageTrainTransform(preprocessing, augment))
    val_ds = ImageFolderDataset(va, lambda im: eval_image(im, preprocessing))
    train = LoaderBatches(train_ds, batch_size, True, workers, seed, rank, world, pin)
    val = LoaderBatches(val_ds, eval_batch_size, False, workers, seed, rank, world, pin)
    return DataBundle(train, val, classes, preprocessing, report, "val")


def build_eval_data(
    data: str,
    preprocessing: Preprocessing,
    batch_size: int,
    *,
    split: str | None = None,
    workers: int = 2,
    strict: bool = False,
):
    """Eval batches and class names: Fashion-MNIST's test split by default, or an image folder (its val/ part,
    or every image when it has no train/ subfolder)."""
    from pathlib import Path

    from mnv2.data.folder import scan_folder

    if data == fashion_mnist.NAME:
        split = split or "test"
        x, y = fashion_mnist.load_fashion_mnist(split)
        return (
            TensorBatches(
                resize_uint8(x, preprocessing.input_size), y, batch_size, BatchAugment(preprocessing, None), False
            ),
            list(fashion_mnist.CLASS_NAMES),
            ScanReport(),
        )
    root = Path(data)
    report = ScanReport()
    if split is not None:
        root = root / split
    elif (root / "val").is_dir():
        root = root / "val"
    classes, samples = scan_folder(root, strict, report)
    ds = ImageFolderDataset(samples, lambda im: eval_image(im, preprocessing))
    return LoaderBatches(ds, batch_size, False, workers), classes, report
