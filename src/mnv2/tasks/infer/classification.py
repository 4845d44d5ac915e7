"""Classification's inference half (numpy): eval preprocessing, softmax and top-k, the top classes drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnv2 import ops
from mnv2.data.images import eval_image
from mnv2.errors import ConfigError
from mnv2.tasks.infer import Inference, class_names

NAME = "classification"
DEFAULT_TOPK = 5


def prepare(image, info: dict) -> np.ndarray:
    """Eval preprocessing of one RGB PIL image (resize, centre crop, normalise) as the model's card records it."""
    return eval_image(image, info["preprocessing"])


def results(outputs, images: list, info: dict, *, topk: int = DEFAULT_TOPK, **_: Any) -> list[dict]:
    """``{"top": [{"class", "index", "prob"}, ...]}`` per image: the ``topk`` most probable classes, best first."""
    names = class_names(info)
    k = min(topk, len(names))
    if k < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    out = np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs, dtype=np.float32)
    if out.ndim != 2 or out.shape[1] != len(names):
        raise ConfigError(f"the model gives outputs of shape {list(out.shape)}; its card names {len(names)} classes")
    if info["output"] == "probabilities":
        probs = out
        sums = probs.sum(axis=1)
        if not (np.isfinite(probs).all() and probs.min() >= -1e-4 and np.abs(sums - 1).max() <= 1e-2):
            raise ConfigError(
                "the model's card says it gives probabilities, but its outputs are not (rows sum to "
                f"{float(sums.min()):.3g}..{float(sums.max()):.3g}): its output kind is wrong"
            )
    else:
        probs = ops.softmax(out, axis=1)
    values, indices = ops.topk(probs, k)
    return [
        {"top": [{"class": names[j], "index": int(j), "prob": float(v)} for v, j in zip(vals, idxs)]}
        for vals, idxs in zip(values, indices)
    ]


def to_json(result: dict) -> dict:
    return result


def draw(image, result: dict, info: dict) -> np.ndarray:
    """The top classes written in the image's top-left corner on a dark band."""
    from PIL import ImageDraw, ImageFont

    im = image.convert("RGB").copy()
    d = ImageDraw.Draw(im)
    size = max(10, round(min(im.size) / 20))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    y = 2
    for t in result.get("top", [])[:3]:
        text = f"{t['class']} {100 * t['prob']:.1f}%"
        box = d.textbbox((4, y), text, font=font)
        d.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(0, 0, 0))
        d.text((4, y), text, fill=(255, 255, 255), font=font)
        y = box[3] + 4
    return np.asarray(im)


def write(image, result: dict, info: dict, out_dir: Path, stem: str) -> dict:
    return {}  # a classifier's answer is its text line or JSON; pictures only when asked through draw()


def format_line(r: dict) -> str:
    if "error" in r:
        return f"{r['path']}: skipped ({r['error']})"
    return f"{r['path']}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"])


INFERENCE = Inference(
    name=NAME, prepare=prepare, results=results, to_json=to_json, draw=draw, write=write, format_line=format_line,
    options={"topk": DEFAULT_TOPK}, batch_size=64, writes_files=False,
)  # fmt: skip
