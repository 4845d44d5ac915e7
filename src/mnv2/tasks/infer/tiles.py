"""Tiles of a large image (issue 27, 2; issue 24, 4): a 30-pixel animal in a 6000-pixel photo is a speck after one
resize to the detector's 320 pixels; cut into overlapping tiles at about the model's size, it is seen at full
resolution. Each task merges its tiles' results (``Inference.merge_tiles``): boxes in image coordinates with the
duplicates across tile borders removed; segmentation logits blended in the overlaps. Numpy only."""

from __future__ import annotations

import numpy as np

from mnv2.ops import tile_check, tile_windows

# the tile geometry lives in mnv2.ops, so that training data (mnv2.data.detection) cuts the same tiles
check, windows = tile_check, tile_windows


def blend_weights(h: int, w: int, window: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """``[h, w]`` weights of a tile's pixels when overlapping tiles are averaged: falling linearly towards the tile's
    inner borders (where its view of the scene is cut) and flat towards the image's own edges, never 0."""

    def ramp(n: int, cut_start: bool, cut_end: bool) -> np.ndarray:
        pos = np.arange(n, dtype=np.float32) + 0.5
        r = np.ones(n, np.float32)
        if cut_start:
            r = np.minimum(r, pos / (n / 2))
        if cut_end:
            r = np.minimum(r, (n - pos) / (n / 2))
        return np.maximum(r, 1e-3)

    x0, y0, x1, y1 = window
    return np.outer(ramp(h, y0 > 0, y1 < height), ramp(w, x0 > 0, x1 < width))


def run_tiled(inference, info: dict, run, image, size: int, overlap: float, **options) -> dict:
    """One result for a decoded RGB PIL ``image`` cut into ``size`` x ``size`` tiles (:func:`windows`): each tile
    prepared by the task, run through ``run`` (a list of prepared inputs of one shape -> the engine's batch outputs)
    a batch at a time, and merged by the task (``inference.merge_tiles``)."""
    wins = windows(image.width, image.height, size, overlap)
    xs = [inference.prepare(image.crop(w), info) for w in wins]
    outputs: list = []
    for i in range(0, len(xs), inference.batch_size):
        group = xs[i : i + inference.batch_size]  # tiles of one image share a shape (the image's side when smaller)
        out = run(group)
        for j in range(len(group)):
            outputs.append(tuple(o[j : j + 1] for o in out) if isinstance(out, tuple) else out[j : j + 1])
    return inference.merge_tiles(outputs, wins, image, info, **options)
