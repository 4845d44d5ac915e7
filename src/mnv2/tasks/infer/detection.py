"""Detection's inference half (numpy): the whole image resized to the input size, per-class NMS on the decoded boxes
(``mnv2.ops.multiclass_nms``, TF's settings from the card's head), boxes in the image's pixels, drawn with labels."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from mnv2 import ops
from mnv2.data.images import normalize_array_, resize_float
from mnv2.data.palettes import BOX_PALETTE
from mnv2.errors import ConfigError
from mnv2.models.ssdlite_config import SSDLiteConfig
from mnv2.tasks.infer import Inference, class_names, save_png

NAME = "detection"
PREDICT_MIN_SCORE = 0.3  # predict shows detections from this score; 0 gives all (COCO results style)
DECODED_OUTPUT = "boxes_scores"  # what every engine gives: [N, A, 4 + C] decoded boxes, class probabilities


def prepare(image, info: dict) -> np.ndarray:
    """The whole RGB PIL image resized to the input size (SSD's fixed-shape resizer, bilinear and antialiased as the
    training data's), normalised."""
    size = info["preprocessing"].input_size
    x = np.clip(resize_float(image.convert("RGB"), (size, size)), 0, 1, dtype=np.float32)
    return normalize_array_(x, info["preprocessing"])


@functools.lru_cache(maxsize=16)
def _nms_settings(head_items: tuple) -> dict:
    head = dict(head_items)
    return SSDLiteConfig.from_dict(head, "the model card's detection head").nms_settings()


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def results(outputs, images: list, info: dict, *, min_score: float = PREDICT_MIN_SCORE, **_: Any) -> list[dict]:
    """``{"width", "height", "detections"}`` per image: NMS-filtered boxes from ``min_score``, COCO results style
    (``bbox`` ``[x, y, w, h]`` in the image's pixels, ``category_id`` 1..C, ``label``, ``score``), best first.
    ``outputs`` is the decoded ``[N, A, 4 + C]`` every engine gives; ``images`` the PIL images (for their sizes)."""
    if info.get("output") != DECODED_OUTPUT:
        raise ConfigError(f"a detector's outputs are decoded boxes ({DECODED_OUTPUT!r}), not {info.get('output')!r}")
    names = class_names(info, first=1)
    decoded = np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs, dtype=np.float32)
    if decoded.ndim != 3 or decoded.shape[2] != 4 + len(names):
        raise ConfigError(f"the model gives outputs of shape {list(decoded.shape)}; its card names {len(names)} "
                          "classes (expected [N, anchors, 4 + classes])")  # fmt: skip
    settings = _nms_settings(tuple(sorted((k, _hashable(v)) for k, v in info["head"].items())))
    out = []
    for im, d in zip(images, decoded):
        boxes, scores, labels = ops.multiclass_nms(d[:, :4], d[:, 4:], **settings)
        w, h = im.size
        keep = scores >= min_score
        found = []
        for box, score, label in zip(boxes[keep].tolist(), scores[keep].tolist(), labels[keep].tolist()):
            x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
            bbox = [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
            found.append({"bbox": bbox, "category_id": int(label), "label": names[label - 1], "score": round(score, 5)})
        out.append({"width": w, "height": h, "detections": found})
    return out


def to_json(result: dict) -> dict:
    return result


def draw(image, result: dict, info: dict | None = None) -> np.ndarray:
    """The COCO-style detections (boxes, ``label score``) drawn on a copy of the PIL ``image``; best drawn last."""
    from PIL import ImageDraw, ImageFont

    im = image.convert("RGB").copy()
    d = ImageDraw.Draw(im)
    width = max(2, round(min(im.size) / 150))
    try:
        font = ImageFont.load_default(size=max(10, round(min(im.size) / 30)))
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    for det in sorted(result["detections"], key=lambda det: det["score"]):
        x, y, w, h = det["bbox"]
        color = BOX_PALETTE[(det["category_id"] - 1) % len(BOX_PALETTE)]
        d.rectangle([x, y, x + w, y + h], outline=color, width=width)
        text = f"{det['label']} {det['score']:.2f}"
        if "track_id" in det:
            text = f"#{det['track_id']} {text}"
        _, top, _, bottom = d.textbbox((0, 0), text, font=font)
        tx, ty = x, max(0.0, y - (bottom - top) - 2 * width)  # above the box, inside the image
        box = d.textbbox((tx, ty), text, font=font)
        d.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], fill=color)
        d.text((tx, ty), text, fill=(255, 255, 255), font=font)
    return np.asarray(im)


def write(image, result: dict, info: dict, out_dir: Path, stem: str) -> dict:
    """``<stem>.png``: the image with its boxes drawn."""
    return {"image": save_png(draw(image, result, info), out_dir / f"{stem}.png")}


def format_line(r: dict) -> str:
    """``path: raccoon 0.97 [x, y, w, h], ...`` (or ``no detections`` / ``skipped (reason)``)."""
    if "error" in r:
        return f"{r['path']}: skipped ({r['error']})"
    if not r["detections"]:
        return f"{r['path']}: no detections"
    items = [f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['bbox'])}]" for d in r["detections"]]
    return f"{r['path']}: " + ", ".join(items)


INFERENCE = Inference(
    name=NAME, prepare=prepare, results=results, to_json=to_json, draw=draw, write=write, format_line=format_line,
    options={"min_score": PREDICT_MIN_SCORE}, batch_size=16, writes_files=True, class_axis=(-1, 4),
)  # fmt: skip
