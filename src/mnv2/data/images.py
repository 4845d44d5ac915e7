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

# The formats mnv2 decodes, and the only Pillow plugins it lets open a file: anything else is "not a supported image"
# before any other plugin looks at it (Pillow's EPS plugin would hand a PostScript file named .jpg to Ghostscript;
# issue 28, 1). GIF and multi-page TIFF: the first frame. The JPEG plugin also opens the multi-picture JPEGs many phones
# write (MPO).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
SUPPORTED_NAMES = "JPEG, PNG, WebP, BMP, TIFF or GIF"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


class ImageError(Mnv2Error):
    """An image file cannot be decoded."""


class ImageTooLarge(ImageError):
    """An image whose pixel count is over the caller's limit (refused from its header, before decoding)."""


def _decode(source, what: str, max_pixels: int | None = None) -> Image.Image:
    """The one image reader: a file path or a binary stream → RGB, as a viewer shows it.

    Only :data:`SUPPORTED_FORMATS` are tried; ``max_pixels`` refuses an image from its header (a decompression bomb
    is never decoded; Pillow's own bomb check applies besides); the EXIF orientation is applied (a phone photo
    tagged "rotate 90" is read upright, its size as a viewer reports it; issue 28, 7); any failure of a decoder
    (fuzzed files make Pillow raise ``NotImplementedError``, ``AttributeError``, ``struct.error`` ...) is an
    :class:`ImageError` naming the file, so one bad file is one skipped file (issue 28, 6).
    """
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with Image.open(source, formats=SUPPORTED_FORMATS) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLarge(f"the image is {w} x {h} pixels; at most {max_pixels:,} pixels are accepted")
            im.load()  # decodes everything: truncated files fail here, not later in a worker
            return _to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f"cannot decode {what}: not a supported image ({SUPPORTED_NAMES})") from e
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{what} is too large to decode safely ({e})") from e
    except MemoryError as e:
        raise ImageTooLarge(f"{what} is too large to decode in this machine's memory") from e
    except Exception as e:  # any decoder failure, see above
        raise ImageError(f"cannot decode {what} ({type(e).__name__}: {e})") from e


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB (grayscale and palette images are expanded to 3 channels), upright."""
    if Path(path).is_dir():
        raise ImageError(f"{str(path)!r} is a directory, not an image")
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; a missing or unreadable file is the file's error)
    except OSError as e:
        raise ImageError(f"cannot read image {str(path)!r} ({e.strerror or e})") from e
    with f:
        return _decode(f, f"image {str(path)!r}")


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode an image held in memory (an upload) to RGB, as :func:`load_image` does a file."""
    import io

    return _decode(io.BytesIO(data), "the image", max_pixels)


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
