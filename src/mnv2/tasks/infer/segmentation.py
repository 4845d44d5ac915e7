"""Segmentation's inference half (numpy): the image at its own size (or resized to a fixed-size export's), per-pixel
argmax (a fixed-size export's logits resized back, bilinear as the model's own upsampling), class fractions, and
the label, colour and overlay pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnv2 import ops
from mnv2.data.images import normalize_array_, to_array
from mnv2.data.palettes import voc_colormap
from mnv2.data.preprocessing import MIN_INPUT_SIZE
from mnv2.errors import ConfigError
from mnv2.tasks.infer import Inference, class_names, save_png

NAME = "segmentation"
OVERLAY_ALPHA = 0.5
# The most pixels a free-size model runs on; a larger image is scaled down to it and its logits are resized back
# (bilinear, in bands: ops.resize_argmax). At full size a 12-megapixel photo took 3.6 GB and 13.7 s on the 2-core
# machine (issue 28, 13): the activations grow with the pixels. 1920x1080 is finer than any set the examples were
# trained on (CamVid 480x360) and keeps a request within the memory the README states (BENCHMARKS.md).
WORK_PIXELS = 1920 * 1080


def class_colors(info: dict, num_classes: int | None = None) -> np.ndarray:
    """``[C, 3]`` uint8 colours: the card's head ``class_colors`` (from the data), else the VOC colour map."""
    n = len(class_names(info)) if num_classes is None else num_classes
    head = info.get("head") or {}
    colors = head.get("class_colors") or voc_colormap(n)
    return np.asarray(colors, dtype=np.uint8)[:n]


def work_size(height: int, width: int, info: dict) -> tuple[int, int]:
    """``(height, width)`` the model runs an image of that size at: a fixed-size export's (``info["input_hw"]``),
    else the image's own, scaled down to :data:`WORK_PIXELS` when larger (aspect kept)."""
    if info.get("input_hw"):
        return tuple(info["input_hw"])
    if height * width <= WORK_PIXELS:
        return height, width
    s = (WORK_PIXELS / (height * width)) ** 0.5
    return max(1, int(height * s)), max(1, int(width * s))


def prepare(image, info: dict) -> np.ndarray:
    """The RGB PIL image at full resolution (up to :data:`WORK_PIXELS`), normalised; padded (bottom, right) to the
    model's 32 px minimum. An exported graph of one size (``info["input_hw"]``, e.g. 360x480), or a larger image, is
    resized to its :func:`work_size` (bilinear), and :func:`results` resizes the logits back."""
    from PIL import Image

    image = image.convert("RGB")
    h, w = work_size(image.height, image.width, info)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.BILINEAR)
    x = normalize_array_(to_array(image), info["preprocessing"])
    h, w = x.shape[-2:]
    ph, pw = max(MIN_INPUT_SIZE - h, 0), max(MIN_INPUT_SIZE - w, 0)
    return np.pad(x, ((0, 0), (0, ph), (0, pw))) if ph or pw else x


def results(outputs, images: list, info: dict, **_: Any) -> list[dict]:
    """``{"width", "height", "fractions", "mask"}`` per image: each class's fraction of the image's pixels (every
    class, in class order) and ``mask``, the class of each pixel (``uint8`` array ``[H, W]``, not JSON: callers
    write or encode it). ``outputs`` are the logits of a batch of :func:`prepare`'d images of one size; a fixed-size
    export's (``info["input_hw"]``) are resized to each image's size (bilinear, as the model's own upsampling)."""
    names = class_names(info)
    logits = np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs, dtype=np.float32)
    if logits.ndim != 4 or logits.shape[1] != len(names):
        raise ConfigError(f"the model gives outputs of shape {list(logits.shape)}; its card names {len(names)} "
                          "classes (expected [N, classes, H, W])")  # fmt: skip
    out = []
    for i, im in enumerate(images):
        w, h = im.size
        wh, ww = work_size(h, w, info)
        # drop prepare's padding, then back to the image's size (bilinear, as the model's own upsampling)
        lab = ops.resize_argmax(logits[i][:, :wh, :ww], (h, w))
        counts = np.bincount(lab.ravel(), minlength=len(names))
        fractions = {n: round(float(c) / lab.size, 6) for n, c in zip(names, counts)}
        out.append({"width": w, "height": h, "fractions": fractions, "mask": lab})
    return out


def to_json(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("mask", "scores")}


def overlay(image, mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """The class colours over the RGB PIL ``image``, half transparent (uint8 ``[H, W, 3]``)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return (rgb * (1 - OVERLAY_ALPHA) + colors[mask] * OVERLAY_ALPHA).round().astype(np.uint8)


def draw(image, result: dict, info: dict) -> np.ndarray:
    return overlay(image, result["mask"], class_colors(info))


def write(image, result: dict, info: dict, out_dir: Path, stem: str) -> dict:
    """``<stem>_label.png`` (class indices, mode L), ``<stem>_color.png`` (class colours) and ``<stem>_overlay.png``
    (the colours over the photo, half transparent)."""
    mask, palette = result["mask"], class_colors(info)
    arrays = {"label": mask, "color": palette[mask], "overlay": overlay(image, mask, palette)}
    return {kind: save_png(a, out_dir / f"{stem}_{kind}.png") for kind, a in arrays.items()}


def format_line(r: dict) -> str:
    """``path: road 41.2%, sky 20.1%, building 12.0% -> out/x_overlay.png`` (the three largest classes)."""
    if "error" in r:
        return f"{r['path']}: skipped ({r['error']})"
    top = sorted(((f, n) for n, f in r["fractions"].items() if f > 0), reverse=True)[:3]
    text = f"{r['path']}: " + ", ".join(f"{n} {100 * f:.1f}%" for f, n in top)
    return text + (f" -> {r['overlay']}" if "overlay" in r else "")


def merge_tiles(outputs: list, windows: list, image, info: dict, *, scores: bool = False, **_: Any) -> dict:
    """One result for ``image`` from its tiles' logits: each tile's logits at its window's size (a fixed-size
    export's resized back, bilinear), blended where tiles overlap with weights that fall towards a tile's inner
    borders (``tiles.blend_weights``), then the class of each pixel. One tile covering the image gives exactly the
    untiled result. ``scores``: the blended logits too (``[C, H, W]``, for evaluation)."""
    from mnv2.tasks.infer.tiles import blend_weights

    names = class_names(info)
    W, H = image.size
    acc = np.zeros((len(names), H, W), np.float32)
    norm = np.zeros((H, W), np.float32)
    for out, win in zip(outputs, windows):
        x0, y0, x1, y1 = win
        h, w = y1 - y0, x1 - x0
        logits = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float32)[0]
        wh, ww = work_size(h, w, info)
        tile = ops.resize_bilinear(logits[:, :wh, :ww], (h, w))
        weight = blend_weights(h, w, win, W, H)
        acc[:, y0:y1, x0:x1] += tile * weight
        norm[y0:y1, x0:x1] += weight
    acc /= norm
    lab = acc.argmax(0).astype(np.uint8)
    counts = np.bincount(lab.ravel(), minlength=len(names))
    fractions = {n: round(float(c) / lab.size, 6) for n, c in zip(names, counts)}
    return {"width": W, "height": H, "fractions": fractions, "mask": lab, **({"scores": acc} if scores else {})}


INFERENCE = Inference(
    name=NAME, prepare=prepare, results=results, to_json=to_json, draw=draw, write=write, format_line=format_line,
    options={}, batch_size=4, writes_files=True, fixed_size=False, palette=class_colors,
    class_axis=(1, 0), merge_tiles=merge_tiles,
)  # fmt: skip
