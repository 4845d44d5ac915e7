"""Fashion-MNIST (Xiao et al. 2017; github.com/zalandoresearch/fashion-mnist): 60k/10k 28x28 grayscale, 10 classes.

The IDX files are looked for, in order: in the ``root`` the user gives (``--data PATH``), in mnv2's cache, in the
Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), and are otherwise downloaded
from the official URLs into the cache. The whole split is held as one uint8 tensor: at 28x28 the dataset is 47 MB,
and batched tensor augmentation is far faster than a per-image pipeline on a small CPU.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

from mnv2.data.download import download
from mnv2.errors import Mnv2Error
from mnv2.files import cache_dir

NAME = "fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # the Fashion-MNIST README's link
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # `dpkg -L dataset-fashion-mnist`
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# sha256 of the *decompressed* IDX files, computed here from Debian's dataset-fashion-mnist 0.0~git20200523 (whose
# .gz files are re-compressed: their MD5s differ from the README's, so we check content, not the gzip wrapper).
IDX_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Per-pixel statistics of the train split on [0, 1] (computed with `fashion_mnist_stats()`).
MEAN = 0.2860
STD = 0.3530
IDX_DTYPES = {0x08: np.uint8}


class DatasetError(Mnv2Error):
    """A dataset is missing, malformed or inconsistent."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic ``0 0 dtype ndim``, big-endian int32 dims, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{str(path)!r} is not a readable IDX file ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DatasetError(f"{str(path)!r} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, 4))
    size = int(np.prod(dims))
    if len(data) != 4 + 4 * ndim + size:
        raise DatasetError(f"{str(path)!r} is truncated: header says {dims}, file has {len(data)} bytes")
    return np.frombuffer(data, np.uint8, size, 4 + 4 * ndim).reshape(dims)


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def locate(root: str | Path | None = None, allow_download: bool = True, base_url: str = BASE_URL) -> dict[str, Path]:
    """Paths of the four IDX files; downloads into the cache what is found nowhere else."""
    if root is not None and not Path(root).is_dir():
        raise DatasetError(f"Fashion-MNIST directory {str(root)!r} does not exist")
    cache = cache_dir() / NAME
    dirs = ([Path(root)] if root is not None else []) + [cache, DEBIAN_DIR]
    found = {}
    for files in SPLITS.values():
        for name in files:
            path = _find(name, dirs)
            if path is None and root is not None:
                raise DatasetError(f"{name}[.gz] not found in {str(root)!r}")
            if path is None:
                if not allow_download:
                    raise DatasetError(f"{name}.gz not found in {cache} or {DEBIAN_DIR}, and downloading is off")
                path = _download_idx(name, cache, base_url)
            found[name] = path
    return found


def _download_idx(name: str, cache: Path, base_url: str, expected: dict[str, str] = IDX_SHA256) -> Path:
    gz = download(base_url + f"{name}.gz", cache / f".{name}.gz.download")
    try:
        raw = gzip.decompress(gz.read_bytes())
    except (OSError, EOFError) as e:
        raise DatasetError(f"downloaded {name}.gz is not gzip data ({e})") from e
    finally:
        gz.unlink()
    got = hashlib.sha256(raw).hexdigest()
    if got != expected[name]:
        raise DatasetError(f"downloaded {name}: sha256 {got} does not match the expected {expected[name]}")
    out = cache / name  # stored decompressed: reading it is then a plain file read
    tmp = cache / f".{name}.tmp"
    tmp.write_bytes(raw)
    tmp.replace(out)
    return out


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None, allow_download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]`` for ``split`` in ``train``/``test``."""
    if split not in SPLITS:
        raise DatasetError(f"Fashion-MNIST split must be one of {sorted(SPLITS)}, got {split!r}")
    paths = locate(root, allow_download)
    img_name, lbl_name = SPLITS[split]
    images, labels = read_idx(paths[img_name]), read_idx(paths[lbl_name])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise DatasetError(f"Fashion-MNIST {split}: label {labels.max()} is out of range")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def fashion_mnist_stats(root: str | Path | None = None) -> tuple[float, float]:
    """Mean and std of the train split's pixels on [0, 1] (the source of ``MEAN`` and ``STD``)."""
    x = load_fashion_mnist("train", root)[0].float() / 255
    return x.mean().item(), x.std().item()
