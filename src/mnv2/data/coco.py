"""COCO layouts shared by the detection and segmentation readers: where a folder's annotation files and images are,
and COCO instance segmentations (polygons, RLE) painted into class masks.

A folder holds ``annotations/instances_<split>*.json`` (images in ``<split>/``, ``images/<split>/`` or ``images/``),
or Roboflow's ``<split>/_annotations.coco.json`` beside its images; an annotation file may also be named directly.
The masks are rasterised by pycocotools (``frPyObjects``, ``decode``), the reference implementation of COCO's
polygon and RLE encodings.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnv2.data.splits import TRAIN_NAMES, VAL_NAMES

CROWD = 255  # the label of iscrowd regions in a painted mask: not annotated object by object, so ignored


def coco_split_name(name: str) -> str:
    """The split a COCO file or folder name stands for: ``instances_val2017`` → ``val``; Roboflow's ``valid/`` and
    a ``validation`` folder → ``val`` (the name COCO layouts have always been read with here)."""
    name = name.removeprefix("instances_")
    base = name.rstrip("0123456789")
    name = base if base in (*TRAIN_NAMES, *VAL_NAMES) else name
    return "val" if name in VAL_NAMES[:3] else name


def coco_split_files(root: Path) -> dict[str, Path]:
    """``{split: annotation file}`` of a COCO folder: ``annotations/instances_<split>*.json``, else the first
    ``.json`` in a ``<split>/`` folder named as :mod:`mnv2.data.splits` names splits (Roboflow: ``train/``,
    ``valid/``, ``test/``). The first file in name order wins a split."""
    cands = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    for d in (*TRAIN_NAMES, *VAL_NAMES):
        cands += sorted((root / d).glob("*.json")) if (root / d).is_dir() else []
    found: dict[str, Path] = {}
    for p in cands:
        found.setdefault(coco_split_name(p.stem if p.parent.name == "annotations" else p.parent.name), p)
    return found


def coco_image_dir(path: Path) -> Path:
    """Where a COCO file's images are: ``images/`` beside it, ``../<split>/`` or ``../images/<split>/`` for
    ``instances_<split>.json``, ``../images/``, else beside it."""
    split = path.stem.removeprefix("instances_")
    root = path.parent.parent
    for d in (path.parent / "images", root / split, root / "images" / split, root / "images"):
        if d.is_dir():
            return d
    return path.parent


@dataclass(frozen=True)
class CocoShapes:
    """One image's instance segmentations, to paint: ``shapes`` are ``(label, segmentation)`` in the file's order,
    ``label`` the class index (1..K) or :data:`CROWD`; ``segmentation`` COCO polygons (a list of ``[x, y, ...]``) or
    RLE (``{"size": [h, w], "counts": [...] or "..."}``), checked by :func:`check_segmentation`."""

    height: int
    width: int
    shapes: tuple[tuple[int, object], ...]


def check_segmentation(seg: object, height: int, width: int) -> str | None:
    """What is wrong with a COCO ``segmentation`` of a ``width`` x ``height`` image, or ``None``."""
    if isinstance(seg, list):
        if not seg:
            return "an empty polygon list"
        for poly in seg:
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0):
                # pycocotools would read 4 numbers as a box, and odd counts are no points
                return "a polygon that is not a list of at least 3 x, y points"
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly):
                return "a polygon with a value that is not a finite number"
        return None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size, counts = seg["size"], seg["counts"]
        if size != [height, width]:
            return f"an RLE of size {size!r}, not the image's [{height}, {width}]"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                return "an uncompressed RLE whose counts are not non-negative integers summing to height x width"
            return None
        if isinstance(counts, str):
            return None
        return f"an RLE whose counts are {type(counts).__name__}, not a list or a string"
    return "neither polygons nor an RLE"


def paint_mask(shapes: CocoShapes) -> np.ndarray:
    """``int64 [H, W]`` class indices: 0 where no shape is, else the label of the last shape (in the file's order,
    labelling tools' z-order, as the COCO-Stuff API's ``cocoSegmentationToPng`` paints) covering the pixel."""
    from pycocotools import mask as mask_utils

    h, w = shapes.height, shapes.width
    out = np.zeros((h, w), dtype=np.int64)
    for label, seg in shapes.shapes:
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):  # type: ignore[index]
            rle = mask_utils.frPyObjects(seg, h, w)  # uncompressed → compressed
        else:
            rle = seg
        with warnings.catch_warnings():  # pycocotools 2.0's decode warns on every call under NumPy 2 (copy=False)
            warnings.simplefilter("ignore", DeprecationWarning)
            region = mask_utils.decode(rle)
        out[region.astype(bool)] = label
    return out


def _int(obj: object, key: str) -> int | None:
    v = obj.get(key) if isinstance(obj, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class CocoFile:
    """A checked COCO instances file, the part both tasks read the same way: ``categories`` ``{id: name}`` in the
    file's order, ``images`` its image entries (an integer ``id`` and a ``file_name``; positive ``width`` and
    ``height`` when read with ``sizes``), and ``annotations`` each image id's annotations in the file's order (their
    ``image_id`` listed, ``category_id`` known, ``iscrowd`` 0 or 1, and the task's own field checked)."""

    categories: dict[int, str]
    images: tuple[dict, ...]
    annotations: dict[int, list[dict]]


def read_coco(
    path: Path, error: type[Exception], field: str, check: Callable[[object, dict], str | None], sizes: bool = False
) -> CocoFile:
    """Read and check a COCO instances file; anything malformed is an ``error`` naming the file and the category,
    image or annotation. ``field`` is the annotation key the task reads (``bbox``, ``segmentation``) and
    ``check(value, image)`` says what is wrong with it, or ``None``; ``sizes``: the task needs each image's size
    from the file (an RLE must match it) rather than from the image itself."""
    from mnv2.data.textfiles import read_json

    data = read_json(path, error)  # type: ignore[arg-type]
    where = repr(str(path))
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise error(f"{where} is not a COCO instances file (expected 'images', 'annotations', 'categories' lists)")
    categories: dict[int, str] = {}
    for c in data.get("categories") or []:
        cid, name = _int(c, "id"), c.get("name") if isinstance(c, dict) else None
        if cid is None or not isinstance(name, str) or not name:
            raise error(f"{where}: category {c!r} needs an integer 'id' and a 'name'")
        if cid in categories:
            raise error(f"{where}: category id {cid} is listed twice (ids must be unique)")
        categories[cid] = name
    if not categories:
        raise error(f"{where} lists no categories")
    images: dict[int, dict] = {}
    for im in data["images"]:
        iid, name = _int(im, "id"), im.get("file_name") if isinstance(im, dict) else None
        w, h = _int(im, "width"), _int(im, "height")
        if iid is None or not isinstance(name, str) or (sizes and not (w and h and w > 0 and h > 0)):
            need = " and positive 'width', 'height'" if sizes else ""
            raise error(f"{where}: image {im!r} needs an integer 'id', a 'file_name'{need}")
        if iid in images:
            n = sum(_int(other, "id") == iid for other in data["images"])
            raise error(f"{where}: image id {iid} is listed {n} times (ids must be unique)")
        images[iid] = im
    by_image: dict[int, list[dict]] = {}
    orphans: dict[object, int] = {}
    for a in data["annotations"]:
        iid, cid, crowd = _int(a, "image_id"), _int(a, "category_id"), a.get("iscrowd", 0) if isinstance(a, dict) else 0
        what = f"{where}: annotation {a.get('id') if isinstance(a, dict) else a!r}"
        if iid not in images:
            orphans[iid] = orphans.get(iid, 0) + 1
            continue
        if cid not in categories:
            raise error(f"{what} has unknown category_id {cid!r}")
        if crowd not in (0, 1) or isinstance(crowd, float):  # True/False are 1/0
            raise error(f"{what} has iscrowd {crowd!r}; COCO's iscrowd is 0 or 1")
        problem = check(a.get(field), images[iid])
        if problem is not None:
            raise error(f"{what}: its {field} is {problem}")
        by_image.setdefault(iid, []).append(a)
    if orphans:
        raise error(f"{where}: {sum(orphans.values())} annotation(s) of image id(s) the file does not list, "
                    f"e.g. {next(iter(orphans))!r}")  # fmt: skip
    return CocoFile(categories, tuple(images.values()), by_image)


def read_instances(path: Path, error: type[Exception]) -> CocoFile:
    """A COCO instances file with segmentations (:func:`read_coco`), each checked against its image's size."""
    return read_coco(path, error, "segmentation", lambda seg, im: check_segmentation(seg, im["height"], im["width"]),
                     sizes=True)  # fmt: skip
