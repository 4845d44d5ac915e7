"""Decoding and eval preprocessing of image files: Pillow and numpy only (no torch, no augmentation library), so the
inference paths (``mnv2 predict``, the runtime engines, a server, the ``runtime`` install) import nothing of training.
The training side's torch versions are in :mod:`mnv2.data.tensors`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def to_array(im: Image.Image) -> np.ndarray:
    """PIL RGB image → float32 CHW array on [0, 1], contiguous."""
    x = np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)).astype(np.float32)
    x /= np.float32(255)
    return x


def normalize_array_(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """``(x - mean) / std`` per channel of a float32 CHW array, in place (float32 throughout)."""
    x -= np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    x /= np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    return x


def eval_image(im: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Eval preprocessing of one RGB image → normalised float32 CHW array (resize short side, centre crop)."""
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
    return normalize_array_(to_array(im), pre)


def resize_float(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The RGB image resized to ``size`` ``(width, height)`` → float32 CHW array on [0, 1], each channel resampled in
    Pillow's float mode (bilinear, antialiased when shrinking): the values PyTorch's ``interpolate(mode="bilinear",
    antialias=True)`` gives on the [0, 1] image, which detection training and eval use (``data.detection``), without
    rounding to 8 bits in between."""
    a = np.asarray(im, dtype=np.uint8)
    if (im.width, im.height) == tuple(size):
        return to_array(im)
    chans = [
        np.asarray(Image.fromarray(a[..., c].astype(np.float32) / np.float32(255), "F").resize(size, Image.BILINEAR))
        for c in range(3)
    ]
    return np.ascontiguousarray(np.stack(chans), dtype=np.float32)


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
