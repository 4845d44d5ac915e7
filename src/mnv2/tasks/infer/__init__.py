"""The inference half of each task, numpy and Pillow only (issue 25): preprocessing of a decoded image, the results
from a batch of model outputs, the drawing, the files ``predict`` writes and the text line. The torch path
(``mnv2 predict`` of a checkpoint), every runtime engine, ``mnv2 serve`` and the predict driver
(``mnv2.deploy.runtime.predict``) call these same functions, so they give the same results by construction.

Outputs come as numpy arrays in the layout the task's exported file has (detection: boxes decoded in the graph,
``[N, A, 4 + C]``; the torch engine runs the same decoded module, ``Task.export_module``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Inference:
    """One task's inference half as plain functions (``info`` is a model card's dict, ``mnv2.deploy.runtime.card``).

    Attributes:
        name: the task's name (``Task.name``).
        prepare: ``(image, info) -> float32 CHW array``: one decoded RGB PIL image as the model's input; inputs of one
            shape stack into a batch.
        results: ``(outputs, images, info, **options) -> list[dict]``: each image's answer from a batch's outputs
            (numpy), JSON-ready except a segmentation ``mask`` array.
        to_json: ``(result) -> dict``: a result as ``--json`` prints it (arrays dropped).
        draw: ``(image, result, info) -> uint8 [H, W, 3]``: the results drawn over the image.
        write: ``(image, result, info, out_dir, stem) -> dict``: the files ``predict --out`` writes for one image,
            by kind (``{"image": path}``; nothing for classification).
        format_line: ``(result) -> str``: one line of ``mnv2 predict``'s text output.
        options: the per-request options ``results`` takes (``topk``, ``min_score``), with their defaults.
        batch_size: ``predict``'s default batch.
        writes_files: whether ``predict`` writes pictures by default (to ``./predictions``).
        fixed_size: whether every input has the model's one input size (segmentation runs at each image's own size).
        palette: ``(info) -> uint8 [C, 3]`` class colours of a task whose results hold a ``mask``; else None.
        class_axis: ``(axis, extra)``: the output's axis that holds one value per class, plus ``extra`` others
            (detection: 4 box coordinates before the class scores), checked against the card.
        merge_tiles: ``(outputs, windows, image, info, **options) -> dict``: one result for the whole image from its
            tiles' outputs (one array per tile, batch axis kept; ``mnv2.tasks.infer.tiles``); ``None``: the task
            has no tiled inference (classification answers for the whole image).
        tracker: ``(fps) -> (result -> result)``: a tracker for one video (detection: ByteTrack), which adds a
            ``track_id`` to each object of each frame's result, stable across frames; ``None``: nothing to track.
    """

    name: str
    prepare: Callable[[Any, dict], Any]
    results: Callable[..., list[dict]]
    to_json: Callable[[dict], dict]
    draw: Callable[[Any, dict, dict], Any]
    write: Callable[[Any, dict, dict, Path, str], dict]
    format_line: Callable[[dict], str]
    options: dict[str, Any]
    batch_size: int
    writes_files: bool
    fixed_size: bool = True
    palette: Callable[[dict], Any] | None = None
    class_axis: tuple[int, int] = (-1, 0)
    merge_tiles: Callable[..., dict] | None = None
    tracker: Callable[[float], Callable[[dict], dict]] | None = None


def class_names(info: dict, first: int = 0) -> list[str]:
    """The card's class names; numbered from ``first`` when it holds only their count."""
    names = info["class_names"]
    return [str(i + first) for i in range(names)] if isinstance(names, int) else list(names)


def save_png(array, path: Path) -> str:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")
    return str(path)
