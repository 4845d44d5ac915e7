"""YOLO detection datasets, as Ultralytics and Roboflow export them.

A ``data.yaml`` names the classes and the splits::

    path: .                 # optional: the dataset root (relative to the yaml's folder); default: that folder
    train: images/train     # an image folder, a .txt list of image paths, or a list of those; relative to path
    val: images/val
    test: images/test       # optional; any split a key names is a split
    names: [raccoon]        # or {0: raccoon}; ``nc`` alone numbers them class_0 ...

Each image's labels are a text file found by Ultralytics' rule (``img2label_paths``): the last ``/images/`` of the
image's path replaced by ``/labels/`` and the suffix by ``.txt``. One line per object, ``class cx cy w h``,
normalised to the image's width and height (a line ``class x1 y1 x2 y2 ...`` is a polygon: its box is its extent,
as Ultralytics reads segmentation labels for detection). A missing or empty label file is an image without
objects. Roboflow's ``../train/images`` paths are found as Ultralytics finds them (without the ``../``, when the
path with it does not exist). Labels are ``class + 1`` (0 is the detector's background); boxes are checked as every
other layout's are (:func:`mnv2.data.detection.sanitize_boxes`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tqdm.auto import tqdm

from mnv2.data.detection import (
    AnnotationError,
    DetectionRecord,
    DetectionReport,
    _image_size,
    sanitize_boxes,
)
from mnv2.data.images import IMAGE_EXTENSIONS
from mnv2.data.splits import TRAIN_NAMES, VAL_NAMES
from mnv2.data.textfiles import read_text
from mnv2.errors import ConfigError

DATA_FILES = ("data.yaml", "data.yml")
YAML_SUFFIXES = (".yaml", ".yml")


def find_data_yaml(path: str | Path) -> Path | None:
    """``path`` itself when it is a ``.yaml``/``.yml`` file, the ``data.yaml`` in the folder ``path``, else ``None``."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in YAML_SUFFIXES:
        return path
    if path.is_dir():
        return next((path / n for n in DATA_FILES if (path / n).is_file()), None)
    return None


def label_path(image: str | Path) -> Path:
    """The label file of ``image`` (Ultralytics ``img2label_paths``): the last ``/images/`` of its absolute path
    replaced by ``/labels/``, the suffix by ``.txt``; beside the image when its path has no ``images`` folder."""
    s = str(Path(image).absolute())
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(s.rsplit(sa, 1))).with_suffix(".txt")


def _class_names(data: dict, path: Path) -> list[str]:
    names, nc = data.get("names"), data.get("nc")
    if names is None and isinstance(nc, int) and nc > 0:
        return [f"class_{i}" for i in range(nc)]  # Ultralytics' names when the yaml gives only nc
    if isinstance(names, dict):
        names = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in names.items()}
        if sorted(names, key=str) != sorted(range(len(names)), key=str):
            raise AnnotationError(f"{str(path)!r}: 'names' keys must be the class ids 0..{len(names) - 1}, got "
                                  f"{sorted(names, key=str)[:8]}")  # fmt: skip
        names = [names[i] for i in range(len(names))]
    if not (isinstance(names, list) and names and all(isinstance(n, (str, int)) for n in names)):
        raise AnnotationError(f"{str(path)!r} needs 'names': a list of class names or a {{id: name}} mapping")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise AnnotationError(f"{str(path)!r}: class names are not unique")
    if nc is not None and nc != len(names):
        raise AnnotationError(f"{str(path)!r}: nc is {nc!r} but 'names' lists {len(names)} classes")
    return names


def _split_images(entry: object, root: Path, path: Path, key: str) -> list[Path]:
    """The images of one split entry: folders (searched recursively) and ``.txt`` lists, one or a list of them."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        if not isinstance(e, str) or not e.strip():
            raise AnnotationError(f"{str(path)!r}: {key!r} must be a folder or .txt list (or a list of them), "
                                  f"got {e!r}")  # fmt: skip
        p = root / e
        if not p.exists() and e.startswith("../"):
            p = root / e[3:]  # Roboflow writes ../train/images beside data.yaml; Ultralytics retries without ../
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            # Ultralytics: lines are image paths, "./" ones relative to the list's folder
            lines = [n.strip() for n in read_text(p, AnnotationError).splitlines() if n.strip()]
            images += [Path(n) if Path(n).is_absolute() else p.parent / n for n in lines]
        else:
            raise ConfigError(f"{str(path)!r}: {key} {e!r} is neither an image folder nor a list file (looked at "
                              f"{str(p)!r})")  # fmt: skip
    return images


def read_data_yaml(path: str | Path) -> tuple[list[str], dict[str, list[Path]]]:
    """``(class_names, {split: image paths})`` of a YOLO ``data.yaml``; splits are its ``train``/``val``/``test``
    (and other :mod:`mnv2.data.splits` names) keys that are set."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, AnnotationError))
    except yaml.YAMLError as e:
        raise AnnotationError(f"{str(path)!r} is not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise AnnotationError(f"{str(path)!r} is not a YOLO data.yaml (expected a mapping with names, train, val)")
    names = _class_names(data, path)
    root = path.parent
    if data.get("path"):
        root = root / str(data["path"])  # an absolute path replaces the yaml's folder
    splits = {k: _split_images(data[k], root, path, k) for k in (*TRAIN_NAMES, *VAL_NAMES) if data.get(k)}
    if not splits:
        raise AnnotationError(f"{str(path)!r} names no split: expected train and val (image folders or lists)")
    return names, splits


def parse_yolo_labels(path: Path, num_classes: int) -> list[tuple[int, list[float]]]:
    """``[(class, [x1, y1, x2, y2] normalised), ...]`` of a YOLO label file (none when it is missing or empty); a
    line that is not ``class cx cy w h`` or a polygon is an :class:`AnnotationError` naming the file and line."""
    if not path.is_file():
        return []
    objects = []
    for n, line in enumerate(read_text(path, AnnotationError).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{str(path)!r} line {n}"
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise AnnotationError(f"{where}: {line.strip()!r} is not numbers (class cx cy w h)") from None
        if not all(math.isfinite(v) for v in values):
            raise AnnotationError(f"{where}: {line.strip()!r} has a non-finite value")
        cls, coords = values[0], values[1:]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise AnnotationError(f"{where}: class {parts[0]!r} is not a class id 0..{num_classes - 1} of the "
                                  f"{num_classes} names")  # fmt: skip
        if len(coords) == 4:
            cx, cy, w, h = coords
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        else:
            raise AnnotationError(f"{where}: {len(parts)} values; expected class cx cy w h (5) or a polygon, class "
                                  "x1 y1 x2 y2 x3 y3 ...")  # fmt: skip
        objects.append((int(cls), box))
    return objects


def load_yolo(
    path: str | Path, strict: bool = False, report: DetectionReport | None = None, invalid: str = "drop"
) -> tuple[list[str], dict[str, list[DetectionRecord]]]:
    """Read a YOLO dataset (its ``data.yaml``): ``(class_names, {split: records})``, boxes in pixel corners.
    ``invalid``: what an invalid box is (:func:`mnv2.data.detection.sanitize_boxes`)."""
    path = Path(path)
    report = report if report is not None else DetectionReport()
    names, splits = read_data_yaml(path)
    done: dict[Path, DetectionRecord | None] = {}  # an image in two splits is read once
    total = len({p for images in splits.values() for p in images})
    for image in tqdm((p for images in splits.values() for p in images), desc=f"check {path.parent.name}",
                      total=total, leave=False, disable=total < 500):  # fmt: skip
        if image in done:
            continue
        if not image.is_file():
            raise ConfigError(f"{str(path)!r}: image {str(image)!r} does not exist")
        size = _image_size(image, strict, report)
        if size is None:
            done[image] = None
            continue
        labels = label_path(image)
        objects = parse_yolo_labels(labels, len(names))
        w, h = size
        boxes = [[b[0] * w, b[1] * h, b[2] * w, b[3] * h] for _, b in objects]
        dropped: list[str] = []
        keep = sanitize_boxes(boxes, w, h, report, invalid=invalid, source=str(labels),
                              names=[names[c] for c, _ in objects], dropped=dropped)  # fmt: skip
        done[image] = DetectionRecord(str(image), w, h, [boxes[i] for i in keep], [objects[i][0] + 1 for i in keep],
                                      [False] * len(keep), dropped)  # fmt: skip
        report.empty_images += not keep
    return names, {s: [r for r in (done[p] for p in images) if r is not None] for s, images in splits.items()}
