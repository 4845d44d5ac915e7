"""Image folders: ``root/train/<class>/*`` and ``root/val/<class>/*`` (any of :data:`mnv2.data.splits.VAL_NAMES`),
or one ``root/<class>/*`` folder split into train/val by a seeded ratio. Files are checked once when the dataset is
built: corrupt or truncated images are skipped and counted (or raise with ``strict``), non-image files are reported,
and empty classes or class sets that differ between train and val are errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mnv2.data.fashion_mnist import DatasetError
from mnv2.data.images import IMAGE_EXTENSIONS, ImageError, load_image
from mnv2.data.splits import VAL_NAMES, seeded_split, val_split_name


@dataclass
class ScanReport:
    """What a folder scan skipped."""

    corrupt: list[str] = field(default_factory=list)
    non_image: list[str] = field(default_factory=list)

    def message(self) -> str | None:
        parts = []
        if self.corrupt:
            parts.append(f"skipped {len(self.corrupt)} corrupt image(s), e.g. {self.corrupt[0]}")
        if self.non_image:
            parts.append(f"ignored {len(self.non_image)} non-image file(s), e.g. {self.non_image[0]}")
        return "; ".join(parts) or None

    def skipped_counts(self) -> dict:
        """What was skipped or dropped, as numbers (``mnv2 eval --json``'s ``skipped``)."""
        return {"corrupt": len(self.corrupt), "non_image": len(self.non_image)}


def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DatasetError(f"{str(root)!r} has no class folders (expected {root}/<class>/<image files>)")
    return dirs


def scan_folder(
    root: str | Path, strict: bool = False, report: ScanReport | None = None, verify: bool = True
) -> tuple[list[str], list[tuple[str, int]]]:
    """List ``(path, class_index)`` of the images under ``root/<class>/``; returns ``(class_names, samples)``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data path {str(root)!r} does not exist or is not a directory")
    report = report if report is not None else ScanReport()
    dirs = _class_dirs(root)
    classes = [d.name for d in dirs]
    samples = []
    files = [(f, i) for i, d in enumerate(dirs) for f in sorted(d.rglob("*")) if f.is_file()]
    for f, i in tqdm(files, desc=f"check {root.name}", leave=False, disable=len(files) < 500):
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            if strict:
                raise DatasetError(f"{str(f)!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)}); --strict")
            report.non_image.append(str(f))
            continue
        if verify:
            try:
                load_image(f)
            except ImageError as e:
                if strict:
                    raise DatasetError(f"{e}; --strict") from e
                report.corrupt.append(str(f))
                continue
        samples.append((str(f), i))
    counts = [sum(1 for _, c in samples if c == i) for i in range(len(classes))]
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"class folder(s) with no readable images under {str(root)!r}: {', '.join(empty)}")
    return classes, samples


def val_folder(root: str | Path) -> Path | None:
    """The validation part of an image folder split into ``train/`` and a :data:`VAL_NAMES` folder (``val/`` is
    taken even without ``train/``); ``None`` for one folder of classes, where those names could be classes."""
    root = Path(root)
    names = [d.name for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    name = val_split_name(names) if "train" in names else ("val" if "val" in names else None)
    return root / name if name is not None else None


def folder_splits(
    root: str | Path, val_split: float = 0.1, seed: int = 0, strict: bool = False
) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]], str, ScanReport]:
    """``(classes, train, val, val name, report)`` of ``root``: its ``train/`` and validation subfolders (the name is
    that folder's: ``val``, ``valid``, ...), or a seeded split of one folder (``"val"``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data path {str(root)!r} does not exist or is not a directory")
    report = ScanReport()
    if (root / "train").is_dir():
        classes, train = scan_folder(root / "train", strict, report)
        val_root = val_folder(root)
        if val_root is None:
            raise DatasetError(f"{str(root)!r} has train/ but no val/ folder (or {', '.join(VAL_NAMES[1:])})")
        val_classes, val = scan_folder(val_root, strict, report)
        if val_classes != classes:
            only_t, only_v = sorted(set(classes) - set(val_classes)), sorted(set(val_classes) - set(classes))
            raise DatasetError(
                f"train and {val_root.name} class folders differ: only in train: {only_t or '-'}; "
                f"only in {val_root.name}: {only_v or '-'}"
            )
        return classes, train, val, val_root.name, report
    if not 0 < val_split < 1:
        raise DatasetError(f"val_split must be in (0, 1) to split one folder, got {val_split!r}")
    classes, samples = scan_folder(root, strict, report)
    # split each class by the ratio, so every class is in both parts
    train, val = seeded_split(samples, val_split, seed, key=lambda s: s[1])
    no_train = [c for i, c in enumerate(classes) if not any(s[1] == i for s in train)]
    if no_train:
        raise DatasetError(
            f"--val-split {val_split} leaves no training image for class(es) {', '.join(no_train[:5])} of "
            f"{str(root)!r}; use a smaller --val-split or more images"
        )
    return classes, train, val, "val", report


class ImageFolderDataset(torch.utils.data.Dataset):
    """``(path, class)`` samples → ``(tensor, class)`` through ``transform`` (a PIL RGB image → CHW tensor)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[i]
        return self.transform(load_image(path)), target
