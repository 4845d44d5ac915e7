"""Calibration / evaluation data for ``mnv2 quantize``, as ``(preprocessed float NCHW batch, labels)`` batches.

Accepted sources:
- an ``.npz`` file with ``x`` (uint8 NHWC images already at the input size, or a preprocessed float NCHW array)
  and ``y`` (integer labels);
- a folder of class sub-folders of images (``root/<class>/*.png|jpg``), classes sorted by name.

Images go through the checkpoint's own :class:`~mnv2.data.preprocessing.Preprocessing` (resize the short side,
centre crop, scale, normalise), so calibration sees exactly what the model was trained on.
TODO(merge issue 3): delegate folders and Fashion-MNIST IDX files to ``mnv2.data``'s loaders once they land.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnv2.data.preprocessing import Preprocessing
from mnv2.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values


def normalize(x: np.ndarray, pre: Preprocessing, in_chans: int = 3) -> np.ndarray:
    """uint8 NHWC (or NHW) pixels at the input size → normalised float32 NCHW."""
    if x.ndim == 3:
        x = x[..., None]
    x = x.astype(np.float32) / 255.0
    if x.shape[-1] == 1 and in_chans > 1:
        x = np.repeat(x, in_chans, axis=-1)  # grayscale source expanded before normalising (Preprocessing doc)
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    return ((x - mean) / std).transpose(0, 3, 1, 2).copy()


def load_image(path: Path, pre: Preprocessing) -> np.ndarray:
    """One image file → uint8 HWC after resize (short side) and centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if pre.grayscale else "RGB")
        w, h = im.size
        s = pre.resize_size / min(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), _RESAMPLE[pre.interpolation])
        w, h = im.size
        left, top = (w - pre.input_size) // 2, (h - pre.input_size) // 2
        im = im.crop((left, top, left + pre.input_size, top + pre.input_size))
        return np.asarray(im)


def load_dataset(
    path: str | Path, pre: Preprocessing, in_chans: int = 3, limit: int | None = None, batch: int = 64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Load ``path`` (``.npz`` or class folders) into preprocessed batches; at most ``limit`` samples."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise ConfigError(f"{str(path)!r} must hold arrays 'x' and 'y' (found {', '.join(f.files)})")
            x, y = f["x"][:limit], f["y"][:limit].astype(np.int64)
        if x.dtype == np.uint8:
            if x.shape[1:3] != (pre.input_size, pre.input_size):
                raise ConfigError(
                    f"{str(path)!r}: uint8 images are {x.shape[1]}x{x.shape[2]}, the model takes "
                    f"{pre.input_size}x{pre.input_size}"
                )
            x = normalize(x, pre, in_chans)
        elif x.ndim != 4 or x.shape[1] != in_chans:
            raise ConfigError(f"{str(path)!r}: float 'x' must be preprocessed NCHW with {in_chans} channels")
        x = x.astype(np.float32)
    elif path.is_dir():
        classes = sorted(p.name for p in path.iterdir() if p.is_dir())
        files = [
            (f, i)
            for i, c in enumerate(classes)
            for f in sorted((path / c).iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not files:
            raise ConfigError(f"{str(path)!r} has no class sub-folders with images ({', '.join(IMAGE_SUFFIXES)})")
        if limit is not None:  # a class-balanced subset, not the first classes only
            files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:limit]]
        x = normalize(np.stack([load_image(f, pre) for f, _ in files]), pre, in_chans)
        y = np.array([i for _, i in files], dtype=np.int64)
    else:
        raise ConfigError(f"calibration/eval data {str(path)!r} is neither an .npz file nor a folder of class folders")
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
