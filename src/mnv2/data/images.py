"""Decoding and eval preprocessing of image files: PIL only (no augmentation library), so inference paths
(``mnv2 predict``, the runtime engines, a server) import nothing of training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnv2.data.preprocessing import Preprocessing
from mnv2.errors import ConfigError, Mnv2Error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


class ImageError(Mnv2Error):
    """An image file cannot be decoded."""


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB (grayscale and palette images are expanded to 3 channels)."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything: truncated files fail here, not later in a worker
            return _to_rgb(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot decode image {str(path)!r} ({e})") from e


class ImageTooLarge(ImageError):
    """An image whose pixel count is over the caller's limit (refused from its header, before decoding)."""


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode an image held in memory (an upload) to RGB, as :func:`load_image` does a file.

    ``max_pixels`` refuses images larger than that from the header alone, so a decompression bomb (a small file of
    a huge, uniform image) is never decoded; Pillow's own bomb check applies besides.
    """
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLarge(f"the image is {w} x {h} pixels; at most {max_pixels:,} pixels are accepted")
            im.load()  # truncated data fails here
            return _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"the image is too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot decode the image ({e})") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB of ``im``, decoded by what it is: 16-bit (``I;16*``, ``I``) and float (``F``) single-channel images are
    scaled to 8 bits (Pillow's own conversion clips them, turning a 16-bit image near-white); palette, CMYK, RGBA
    and grayscale as Pillow converts them."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64) / 257.0  # 0..65535 -> 0..255: value*257 maps back to value exactly
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.max() <= 1.0:  # float images are on [0, 1]; larger values are taken as 0..255
            a = a * 255.0
    else:
        return im.convert("RGB")
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")


def to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB image → float CHW tensor on [0, 1], contiguous (the ops after it run 2-10x faster than on a permuted
    view: 0.25 against 2.6 ms for a 224x224 image with :func:`normalize`, one thread)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))).float().div_(255)


def normalize(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a CHW (or NCHW) tensor."""
    return normalize_(x.clone(), pre)


def normalize_(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """:func:`normalize` in place (the same float operations, so the same bits), for a tensor made just before."""
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def eval_image(im: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """Eval preprocessing of one RGB image → normalised CHW tensor (resize short side, centre crop)."""
    w, h = im.size
    scale = pre.resize_size / min(w, h)
    size = (max(pre.input_size, round(w * scale)), max(pre.input_size, round(h * scale)))
    left, top = (size[0] - pre.input_size) // 2, (size[1] - pre.input_size) // 2
    # Resizing just the crop's source box samples where resizing the whole image and then cropping does (the same
    # scale, so the same filter), at the cost of the crop alone: 1.7x faster for a 192x259 photo. Pillow rounds its
    # intermediate rows differently, so a pixel may differ by one grey level.
    sx, sy = w / size[0], h / size[1]
    box = (left * sx, top * sy, (left + pre.input_size) * sx, (top + pre.input_size) * sy)
    im = im.resize((pre.input_size, pre.input_size), PIL_FILTERS[pre.interpolation], box=box)
    return normalize_(to_tensor(im), pre)


def image_paths(inputs: list[str]) -> list[Path]:
    """Files given directly, plus the image files found (recursively) in given directories."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            paths.append(p)
        else:
            raise ConfigError(f"{item!r} is neither an image file nor a directory")
    if not paths:
        raise ConfigError(f"no image files found in {', '.join(inputs)}")
    return paths
