"""Detection's inference half (numpy): the whole image resized to the input size, per-class NMS on the decoded boxes
(``mnv2.ops.multiclass_nms``, TF's settings from the card's head), boxes in the image's pixels, drawn with labels."""

from __future__ import annotations

import functools
from collections.abc import Callable
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


# Tiles overlap, so an object near a border is seen by two or more tiles: whole by one, perhaps cut by another.
# Boxes from different tiles are one object when one box lies mostly inside the other (intersection over the
# smaller box's area, SAHI's "IOS" match metric, at its 0.5); the box a tile saw whole wins, then the higher score.
TILE_EDGE_PX = 2.0  # a box this close to an inner tile border may be an object the tile cut
TILE_MATCH_IOS = 0.5


class _Size:
    def __init__(self, w: int, h: int) -> None:
        self.size = (w, h)


def merge_tiles(outputs: list, windows: list, image, info: dict, *, min_score: float = PREDICT_MIN_SCORE,
                **_: Any) -> dict:  # fmt: skip
    """One result for ``image`` from its tiles' decoded outputs: each tile's detections (NMS as :func:`results`)
    moved into image pixels, then merged per class: uncut boxes before boxes cut by their tile's inner border, best
    score first; a box is dropped when a kept box of its class overlaps it at the head's NMS IoU (a duplicate from
    the overlap) or covers half of the smaller of the two (:data:`TILE_MATCH_IOS`) while coming from another tile
    or the box being cut by its tile (the same object, seen whole elsewhere)."""
    W, H = image.size
    iou = _nms_settings(tuple(sorted((k, _hashable(v)) for k, v in info["head"].items())))["iou_threshold"]
    cands = []  # (cut, -score, tile, box [x1, y1, x2, y2], det)
    for t, (out, (x0, y0, x1, y1)) in enumerate(zip(outputs, windows)):
        (r,) = results(out, [_Size(x1 - x0, y1 - y0)], info, min_score=min_score)
        inner = (x0 > 0, y0 > 0, x1 < W, y1 < H)  # which of the tile's borders lie inside the image
        e = TILE_EDGE_PX
        for d in r["detections"]:
            bx, by, bw, bh = d["bbox"]
            cut = (inner[0] and bx <= e) or (inner[1] and by <= e) or (inner[2] and bx + bw >= x1 - x0 - e) or (
                inner[3] and by + bh >= y1 - y0 - e)  # fmt: skip
            cands.append((cut, -d["score"], t, [bx + x0, by + y0, bx + bw + x0, by + bh + y0], d))
    cands.sort(key=lambda c: (c[0], c[1]))
    kept: list[tuple[int, list[float], dict]] = []
    for cut, _, t, box, d in cands:
        area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
        duplicate = False
        for kt, kb, kd in kept:
            if kd["category_id"] != d["category_id"]:
                continue
            inter = max(min(box[2], kb[2]) - max(box[0], kb[0]), 0) * max(min(box[3], kb[3]) - max(box[1], kb[1]), 0)
            karea = (kb[2] - kb[0]) * (kb[3] - kb[1])
            union = area + karea - inter
            smaller = min(area, karea)
            matched = (kt != t or cut) and smaller > 0 and inter / smaller >= TILE_MATCH_IOS
            if (union > 0 and inter / union > iou) or matched:
                duplicate = True
                break
        if not duplicate:
            x1b, y1b, x2b, y2b = box
            kept.append(
                (t, box, {**d, "bbox": [round(x1b, 2), round(y1b, 2), round(x2b - x1b, 2), round(y2b - y1b, 2)]})
            )
    found = sorted((d for *_, d in kept), key=lambda d: -d["score"])
    return {"width": W, "height": H, "detections": found}


def tracker(fps: float) -> Callable[[dict], dict]:
    """ByteTrack (Zhang et al. 2022; supervision's implementation, ``mnv2[track]``) for one video at ``fps``: each
    frame's result gets a ``track_id`` on every box the tracker follows, the same id for one object across frames;
    a box it does not follow (a one-frame blip under its activation threshold) keeps no id."""
    try:
        import supervision as sv
    except ImportError:
        raise ConfigError("--track needs supervision's ByteTrack: pip install 'mnv2[track]'") from None
    track = sv.ByteTrack(frame_rate=max(1, round(fps)))

    def update(result: dict) -> dict:
        dets = result["detections"]
        if not dets:
            track.update_with_detections(sv.Detections.empty())  # time passes for the tracks it holds
            return result
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], np.float32)
        found = track.update_with_detections(sv.Detections(
            xyxy=xyxy, confidence=np.array([d["score"] for d in dets], np.float32),
            class_id=np.array([d["category_id"] for d in dets]), data={"index": np.arange(len(dets))},
        ))  # fmt: skip
        # the tracked boxes come back as a subset of ours (none while no track is active yet): our index says which
        ids = dict(zip(np.asarray(found.data.get("index", [])).tolist(), np.asarray(found.tracker_id).tolist()))
        tracked = [{**d, "track_id": int(ids[i])} if i in ids else d for i, d in enumerate(dets)]
        return {**result, "detections": tracked}

    return update


INFERENCE = Inference(
    name=NAME, prepare=prepare, results=results, to_json=to_json, draw=draw, write=write, format_line=format_line,
    options={"min_score": PREDICT_MIN_SCORE}, batch_size=16, writes_files=True, class_axis=(-1, 4),
    merge_tiles=merge_tiles, tracker=tracker,
)  # fmt: skip
