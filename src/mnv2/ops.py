"""Numpy operations shared by the torch path and every runtime engine: softmax, top-k, greedy NMS, bilinear resize.

A core module (numpy only): the inference half of each task (``mnv2.tasks.infer``) is built from these, and so are
the torch helpers that must give the same decisions (``mnv2.models.ssdlite.nms``), so torch and the exported files
post-process one way by construction (issue 25).
"""

from __future__ import annotations

import numpy as np

from mnv2.errors import ConfigError


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax in float32 along ``axis`` (max subtracted first: finite for any finite logits)."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.float32(1) / (np.float32(1) + np.exp(-x))


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, indices)`` of the ``k`` largest entries of each row of ``x`` ``[N, C]``, largest first (ties: the
    lower index first)."""
    idx = np.argsort(-np.asarray(x), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx


def argsort_desc(x: np.ndarray) -> np.ndarray:
    """Indices sorting ``x`` from largest to smallest; equal values keep their order (as torch's stable sort)."""
    return np.argsort(-np.asarray(x), kind="stable")


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_output: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes (corners ``x1, y1, x2, y2``), best score first.

    A box is dropped when its IoU with a kept, higher-scored box exceeds ``iou_threshold`` (TF's
    ``non_max_suppression``). Each kept box's IoU row is computed against the boxes after it only when it is kept,
    in float32, and the scan stops at ``max_output`` kept boxes: at most 100 rows of 1000 candidates instead of the
    whole 1000 x 1000 matrix (the raccoon detector's post-processing went from 84 to 6.8 ms an image on one core).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = argsort_desc(scores)
    b = np.asarray(boxes, dtype=np.float32)[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    alive = np.ones(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if not alive[i]:
            continue
        keep.append(i)
        if max_output is not None and len(keep) >= max_output:
            break
        j = slice(i + 1, None)
        w = np.clip(np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]), 0, None)
        inter = w * h
        union = area[i] + area[j] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / np.maximum(union, np.float32(1e-12)), np.float32(0))
        alive[j] &= ~(iou > iou_threshold)
    return order[np.asarray(keep, dtype=np.int64)]


def multiclass_nms(
    boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, iou_threshold: float, pre_nms_top_k: int,
    max_per_class: int, max_total: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One image's detections from per-anchor boxes ``[A, 4]`` and class scores ``[A, C]`` (no background column):
    ``(boxes [k, 4], scores [k], labels [k] in 1..C)``, best first.

    TF's ``batch_multiclass_non_max_suppression``: per class, scores above ``score_threshold``, the best
    ``pre_nms_top_k`` of them, NMS at ``iou_threshold``, at most ``max_per_class``; then the best ``max_total``.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    kb, ks, kl = [], [], []
    for c in range(scores.shape[1]):
        sc = scores[:, c]
        idx = np.flatnonzero(sc > score_threshold)
        if idx.size == 0:
            continue
        if idx.size > pre_nms_top_k:
            idx = idx[argsort_desc(sc[idx])[:pre_nms_top_k]]
        kept = idx[nms(boxes[idx], sc[idx], iou_threshold, max_per_class)]
        kb.append(boxes[kept])
        ks.append(sc[kept])
        kl.append(np.full(len(kept), c + 1, dtype=np.int64))
    if not kb:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    bb, ss, ll = np.concatenate(kb), np.concatenate(ks), np.concatenate(kl)
    top = argsort_desc(ss)[:max_total]
    return bb[top], ss[top], ll[top]


def _linear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each output position's two input neighbours and the second one's weight, with half-pixel centres
    (``align_corners=False``)."""
    scale = n_in / n_out
    src = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _linear_weights(n_out: int, n_in: int) -> np.ndarray:
    """``[n_out, n_in]`` bilinear interpolation weights with half-pixel centres (``align_corners=False``)."""
    i0, i1, frac = _linear_taps(n_out, n_in)
    w = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1 - frac)
    np.add.at(w, (rows, i1), frac)
    return w.astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``x`` ``[C, H, W]`` resized to ``size`` ``(height, width)``, bilinear with half-pixel centres and no
    antialiasing: PyTorch's ``interpolate(mode="bilinear", align_corners=False)``, which the model's own upsampling
    uses (DeepLab's logits), as two small matrix products per channel."""
    x = np.asarray(x, dtype=np.float32)
    h, w = size
    if x.shape[-2:] == (h, w):
        return x
    wy, wx = _linear_weights(h, x.shape[-2]), _linear_weights(w, x.shape[-1])
    return np.einsum("oh,chw,pw->cop", wy, x, wx, optimize=True).astype(np.float32, copy=False)


def resize_argmax(x: np.ndarray, size: tuple[int, int], band_bytes: int = 32 * 2**20) -> np.ndarray:
    """The class of each pixel (uint8 ``[H, W]``) of ``x`` ``[C, h, w]`` resized bilinearly to ``size``, as
    ``resize_bilinear(x, size).argmax(0)`` computes it, but by each output pixel's two neighbours (not dense
    weight matrices: at 12 megapixels those are ~400 GFLOP) and in bands of output rows of at most ``band_bytes``
    of float32 logits: an 11-class 12-megapixel image needs 528 MB for its resized logits, a band 32 MB."""
    x = np.asarray(x, dtype=np.float32)
    h, w = size
    if x.shape[-2:] == (h, w):
        return x.argmax(0).astype(np.uint8)
    y0, y1, fy = _linear_taps(h, x.shape[-2])
    x0, x1, fx = _linear_taps(w, x.shape[-1])
    fy, fx = fy.astype(np.float32)[:, None], fx.astype(np.float32)
    rows = max(1, band_bytes // max(1, 4 * x.shape[0] * w))
    out = np.empty((h, w), np.uint8)
    for r in range(0, h, rows):
        band = slice(r, r + rows)
        t = x[:, y0[band]] * (1 - fy[band]) + x[:, y1[band]] * fy[band]  # [C, rows, w_in]
        out[band] = (t[:, :, x0] * (1 - fx) + t[:, :, x1] * fx).argmax(0)
    return out


# ----------------------------------------------------------------------------------------------- tiles
DEFAULT_OVERLAP = 0.2  # SAHI's default overlap ratio: an object up to a fifth of a tile lies whole in some tile


def tile_check(size: int | None, overlap: float) -> None:
    """Refuse a tile size under the model's 32 px minimum or an overlap outside [0, 0.9]."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 32):
        raise ConfigError(f"--tile must be a whole number of pixels >= 32, got {size!r}")
    if not (isinstance(overlap, (int, float)) and 0 <= overlap <= 0.9):
        raise ConfigError(f"--overlap must be a fraction of the tile in [0, 0.9], got {overlap!r}")


def _tile_starts(n: int, size: int, overlap: float) -> list[int]:
    if n <= size:
        return [0]
    step = max(1, int(size * (1 - overlap)))
    starts = list(range(0, n - size, step))
    return [*starts, n - size]  # the last tile ends at the image's edge


def tile_windows(width: int, height: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of ``size`` x ``size`` tiles (the image's own side where it is smaller) covering the
    image, row by row, neighbours overlapping by at least ``overlap`` of a tile; the last of a row or column is
    aligned with the image's edge."""
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in _tile_starts(height, size, overlap) for x in _tile_starts(width, size, overlap)]  # fmt: skip
