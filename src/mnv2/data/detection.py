"""Detection data (§6.2): Pascal VOC folders, COCO JSON and YOLO, SSD train augmentation, epoch-seeded batches.

Layouts (each split the data defines is a split, :mod:`mnv2.data.splits`):
  VOC   ``root/{images|JPEGImages}/`` and ``root/{annotations|Annotations}/*.xml``; optional split lists of image
        names, with or without extension: ``ImageSets/Main/<split>.txt`` for any split, or ``train.txt`` /
        ``val.txt`` / ``test.txt`` … at the root; without them the annotated images are split by a seeded
        ``val_split``.
  COCO  an annotation ``.json`` file (images in ``images/`` beside it, beside it, or in ``../<split>`` for
        ``annotations/instances_<split>.json``), or a folder with ``annotations/instances_<split>*.json`` or
        ``{train,val,test}/*.json`` (``valid/`` also counts as val).
  YOLO  a ``data.yaml`` (or the folder holding it) with ``names`` and ``train``/``val``/``test`` image folders
        and ``labels/*.txt`` beside ``images/`` (:mod:`mnv2.data.yolo`, as Ultralytics and Roboflow write it).

Class names come from the data, sorted; labels are 1..C (0 is the detector's background). Boxes are checked once,
when the annotations are read, against the image's real size: a box that ends up to :data:`BOX_TOLERANCE_PX` past
the image is clipped to it (VOC's 1-based pixels); a box with no width or height, or outside its image by more, is
invalid: an :class:`AnnotationError` naming the file and the object (``invalid="error"``, what evaluation does:
ground truth is never changed in silence, issue 28), or dropped and counted in the :class:`DetectionReport`
(``invalid="drop"``: training, and ``mnv2 eval --drop-invalid``). Images left without objects are kept (they train the
background). Image paths in annotations (VOC ``<filename>``, COCO ``file_name``) must stay inside the image folder.
Annotation files that cannot be parsed, COCO files with duplicate image ids, annotations of images the file does not
list and ``iscrowd`` values other than 0/1 raise an :class:`AnnotationError` naming the file. Image sizes are read
from the images themselves, not trusted from the annotations.

Train augmentation (the SSD paper's, Liu et al. 2016, of which the TF config keeps flip + ``ssd_random_crop``):
zoom-out expand, SSD random crop (TF ``preprocessor.ssd_random_crop`` defaults), horizontal flip, resize to the
input size, photometric distortion. The geometry is computed here, exactly, on continuous box coordinates: kornia
has no IoU-constrained crop sampler (its random crops ignore the boxes, so "min object covered" cannot be asked
for), and its bbox geometry uses inclusive pixel coordinates (a horizontal flip maps x in [0, 10] of a 100-px image
to [89, 99], a resize scales by (W' - 1) / (W - 1)), an offset of a pixel that VOC/COCO boxes do not have. kornia
does the photometric distortion, which does not move boxes. Eval is a plain resize to the input size (no crop), so
normalised box coordinates are fractions of the original image.
"""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from mnv2.data.batches import LoaderBatches
from mnv2.data.builder import DataBundle, TrainVal, build_bundle, checked_train_val, eval_records
from mnv2.data.coco import coco_image_dir, coco_split_files, read_coco
from mnv2.data.folder import ScanReport
from mnv2.data.images import IMAGE_EXTENSIONS, ImageError, load_image
from mnv2.data.preprocessing import Preprocessing
from mnv2.data.splits import ALL, TRAIN_NAMES, VAL_NAMES, train_split_name, val_split_name
from mnv2.data.tensors import normalize, to_uint8_tensor
from mnv2.data.textfiles import path_inside, read_list
from mnv2.errors import ConfigError
from mnv2.ops import DEFAULT_OVERLAP, tile_windows

# TF preprocessor.ssd_random_crop defaults: one of seven settings drawn per image.
MIN_OBJECT_COVERED = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
# VOC's pixel coordinates are 1-based, so a correct box can end at width + 1; a box reaching further out is wrong,
# not rounded, and is not clipped into something else (issue 28, 8).
BOX_TOLERANCE_PX = 1.0
INVALID_BOXES = ("error", "drop")


class AnnotationError(ConfigError):
    """An annotation file (VOC XML, COCO JSON) cannot be read; the message names the file."""


@dataclass
class DetectionReport(ScanReport):
    """What reading a detection dataset changed or skipped (``ScanReport`` adds corrupt and non-image files)."""

    invalid: int = 0  # boxes dropped (invalid="drop"): no width or height, or outside the image
    invalid_example: str | None = None  # the first of them, as the error would have said it
    clipped: int = 0  # boxes reaching at most BOX_TOLERANCE_PX outside their image, clipped to it
    empty_images: int = 0  # images without (remaining) objects, kept as background
    crowd: int = 0  # COCO iscrowd boxes: evaluated as crowds, not trained on

    def message(self) -> str | None:
        parts = [p for p in [super().message()] if p]
        if self.invalid:
            parts.append(f"dropped {self.invalid} invalid box(es), e.g. {self.invalid_example}")
        if self.clipped:
            parts.append(f"clipped {self.clipped} box(es) to their image")
        if self.empty_images:
            parts.append(f"{self.empty_images} image(s) without objects")
        if self.crowd:
            parts.append(f"{self.crowd} crowd box(es) used only in evaluation")
        return "; ".join(parts) or None

    def skipped_counts(self) -> dict:
        return {**super().skipped_counts(), "invalid_boxes": self.invalid}


@dataclass
class DetectionRecord:
    """One image and its objects: pixel corner boxes ``(x1, y1, x2, y2)``, labels 1..C, crowd flags."""

    path: str
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    iscrowd: list[bool] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # its invalid boxes, dropped (``invalid="drop"``), as said


# ----------------------------------------------------------------------------------------------- reading
INVALID_ADVICE = "fix the annotation, or pass --drop-invalid to drop such boxes (counted in the report)"


def _box_problem(b: list[float], width: int, height: int) -> str | None:
    if not b[2] > b[0]:
        return "no width (xmax <= xmin)"
    if not b[3] > b[1]:
        return "no height (ymax <= ymin)"
    over = max(-b[0], -b[1], b[2] - width, b[3] - height)
    if over > BOX_TOLERANCE_PX:
        return f"reaches {over:.4g} px outside the {width}x{height} image"
    return None


def sanitize_boxes(
    boxes: list[list[float]], width: int, height: int, report: DetectionReport, *, invalid: str = "drop",
    source: str = "", names: list[str] | None = None, dropped: list[str] | None = None,
) -> list[int]:  # fmt: skip
    """Check ``boxes`` against their ``width`` x ``height`` image; return the indices of those kept.

    A box within :data:`BOX_TOLERANCE_PX` of the image is clipped to it (in place; counted as ``clipped``). Any
    other box with no area or outside the image is invalid: with ``invalid="error"`` an :class:`AnnotationError`
    naming ``source`` and the object, with ``"drop"`` dropped, counted in ``report.invalid`` and said in
    ``dropped``.
    """
    keep = []
    for i, b in enumerate(boxes):
        problem = _box_problem(b, width, height)
        if problem is not None:
            what = (
                f"{source!r}: object {i}{f' ({names[i]})' if names else ''} box {[round(v, 2) for v in b]}: {problem}"
            )
            if invalid == "error":
                raise AnnotationError(f"{what}; {INVALID_ADVICE}")
            report.invalid += 1
            report.invalid_example = report.invalid_example or what
            if dropped is not None:
                dropped.append(what)
            continue
        clipped = [min(max(b[0], 0.0), width), min(max(b[1], 0.0), height),
                   min(max(b[2], 0.0), width), min(max(b[3], 0.0), height)]  # fmt: skip
        report.clipped += clipped != list(b)
        boxes[i] = clipped
        keep.append(i)
    return keep


def _number(node: ET.Element, tag: str, path: Path, index: int) -> float:
    text = node.findtext(tag)
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AnnotationError(f"{str(path)!r}: object {index} has no numeric <bndbox>/<{tag}> (got {text!r})") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{str(path)!r}: object {index} has a non-finite <{tag}> ({text!r})")
    return value


def parse_voc_xml(path: str | Path) -> tuple[str | None, list[tuple[str, list[float]]]]:
    """``(filename, [(class name, [xmin, ymin, xmax, ymax]), ...])`` of a Pascal VOC annotation file.

    Coordinates are taken as written (TF ``create_pascal_tf_record`` divides them by the size, no 1-based shift);
    ``difficult`` objects are kept as ordinary boxes (its default ``ignore_difficult_instances=False``).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"{str(path)!r} is not valid XML ({e})") from e
    except OSError as e:
        raise AnnotationError(f"cannot read {str(path)!r} ({e})") from e
    if root.tag != "annotation":
        raise AnnotationError(f"{str(path)!r} is not a Pascal VOC annotation (root <{root.tag}>, not <annotation>)")
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise AnnotationError(f"{str(path)!r}: object {i} has no <name>")
        box = obj.find("bndbox")
        if box is None:
            raise AnnotationError(f"{str(path)!r}: object {i} ({name}) has no <bndbox>")
        objects.append((name, [_number(box, t, path, i) for t in ("xmin", "ymin", "xmax", "ymax")]))
    filename = (root.findtext("filename") or "").strip() or None
    return filename, objects


def _image_size(path: Path, strict: bool, report: DetectionReport) -> tuple[int, int] | None:
    """(width, height) of a decodable image; ``None`` (counted as corrupt) otherwise."""
    try:
        return load_image(path).size
    except ImageError as e:
        if strict:
            raise ConfigError(f"{e}; --strict") from e
        report.corrupt.append(str(path))
        return None


def _find_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def split_lists(root: Path) -> dict[str, Path]:
    """The split lists of a VOC folder, ``{split: list file}``: every ``ImageSets/Main/<split>.txt`` (not VOC's
    per-class ``<class>_<split>.txt`` lists), and ``<split>.txt`` at the root for the split names of
    :mod:`mnv2.data.splits` (a root holds other text files too), which wins over the ``ImageSets`` one."""
    main = root / "ImageSets" / "Main"
    found = {p.stem: p for p in sorted(main.glob("*.txt"))} if main.is_dir() else {}
    per_class = {s for s in found if any(s.endswith(f"_{other}") for other in found if other != s)}
    found = {s: p for s, p in found.items() if s not in per_class}
    for name in (*TRAIN_NAMES, *VAL_NAMES):
        if (root / f"{name}.txt").is_file():
            found[name] = root / f"{name}.txt"
    return found


def _stem(name: str) -> str:
    p = Path(name)
    return p.stem if p.suffix.lower() in IMAGE_EXTENSIONS else p.name


def is_voc(root: Path) -> bool:
    return root.is_dir() and _find_dir(root, ("annotations", "Annotations")) is not None


def load_voc(
    root: str | Path, strict: bool = False, report: DetectionReport | None = None, invalid: str = "drop"
) -> tuple[list[str], dict[str, list[DetectionRecord]]]:
    """Read a VOC folder: ``(class_names, {split: [...]})`` with a split per list (:func:`split_lists`), or
    ``{"all": [...]}``.

    Without a train list, the images no validation (or test) list names are ``train``; without a validation list,
    the images the train list does not name are ``val``. Without any train or validation list every annotation file
    is one record in ``"all"`` (other lists are splits beside it). ``invalid``: what an invalid box is
    (:func:`sanitize_boxes`).
    """
    root = Path(root)
    report = report if report is not None else DetectionReport()
    ann_dir = _find_dir(root, ("annotations", "Annotations"))
    img_dir = _find_dir(root, ("images", "JPEGImages"))
    if ann_dir is None or img_dir is None:
        raise ConfigError(f"{str(root)!r} is not a VOC folder: expected images/ (or JPEGImages/) and annotations/ "
                          "(or Annotations/)")  # fmt: skip
    xmls = {p.stem: p for p in sorted(ann_dir.glob("*.xml"))}
    if not xmls:
        raise ConfigError(f"no .xml annotation files in {str(ann_dir)!r}")
    splits = {s: [_stem(n) for n in read_list(p, AnnotationError)] for s, p in split_lists(root).items()}
    for s, stems in splits.items():
        missing = [n for n in stems if n not in xmls]
        if missing:
            raise ConfigError(f"{s}.txt in {str(root)!r} names {len(missing)} image(s) without an annotation "
                              f"file in {str(ann_dir)!r}, e.g. {missing[0]}.xml")  # fmt: skip
    train_name = train_split_name(splits)
    # a test list is no validation list here: without a val list, val is what the train list leaves out, as it was
    # before test lists were read
    val_name = val_split_name([s for s in splits if s != "test"])
    if train_name is None and val_split_name(splits) is None:
        splits = {ALL: list(xmls), **splits}
    elif train_name is not None and val_name is None:
        taken = set(splits[train_name])
        splits["val"] = [n for n in xmls if n not in taken]
    elif train_name is None:
        taken = {n for s in VAL_NAMES for n in splits.get(s, ())}
        splits["train"] = [n for n in xmls if n not in taken]
    parsed = {stem: parse_voc_xml(xmls[stem]) for stems in splits.values() for stem in stems}
    class_names = sorted({name for _, objects in parsed.values() for name, _ in objects})
    index = {name: i + 1 for i, name in enumerate(class_names)}
    done: dict[str, DetectionRecord | None] = {}  # an image in several lists (VOC's trainval) is read once
    bar = tqdm(total=len(parsed), desc=f"check {root.name}", leave=False, disable=len(parsed) < 500)
    for stem in (stem for stems in splits.values() for stem in stems):
        if stem in done:
            continue
        bar.update()
        filename, objects = parsed[stem]
        path = _voc_image(img_dir, stem, filename, xmls[stem])
        size = _image_size(path, strict, report)
        if size is None:
            done[stem] = None
            continue
        boxes, dropped = [list(b) for _, b in objects], []
        keep = sanitize_boxes(boxes, size[0], size[1], report, invalid=invalid, source=str(xmls[stem]),
                              names=[name for name, _ in objects], dropped=dropped)  # fmt: skip
        done[stem] = DetectionRecord(str(path), size[0], size[1], [boxes[i] for i in keep],
                                     [index[objects[i][0]] for i in keep], [False] * len(keep), dropped)  # fmt: skip
        report.empty_images += not keep
    bar.close()
    out = {s: [r for r in (done[stem] for stem in stems) if r is not None] for s, stems in splits.items()}
    return class_names, out


def _voc_image(img_dir: Path, stem: str, filename: str | None, xml: Path) -> Path:
    candidates = [path_inside(img_dir, filename, xml, "<filename>", AnnotationError)] if filename else []
    candidates += [img_dir / f"{stem}{ext}" for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)]
    for p in candidates:
        if p.is_file():
            return p
    raise ConfigError(f"no image for {str(xml)!r} in {str(img_dir)!r} (looked for {filename or stem + '.jpg'})")


def _check_bbox(bbox: object, image: dict) -> str | None:
    if (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    ):
        return None
    return f"{bbox!r}, not 4 finite numbers [x, y, width, height]"


def load_coco(
    path: str | Path, image_dir: str | Path | None = None, strict: bool = False,
    report: DetectionReport | None = None, invalid: str = "drop",
) -> tuple[list[str], list[DetectionRecord]]:  # fmt: skip
    """Read a COCO annotation file (:func:`mnv2.data.coco.read_coco`): ``(class_names, records)``. ``bbox`` is
    ``[x, y, w, h]`` in pixels; crowd boxes (``iscrowd: 1``) are kept with their flag (evaluation ignores detections
    on them; training leaves them out). Image sizes are read from the images, not trusted from the file."""
    path = Path(path)
    report = report if report is not None else DetectionReport()
    coco = read_coco(path, AnnotationError, "bbox", _check_bbox)
    cat_names = coco.categories
    class_names = sorted(set(cat_names.values()))
    if len(class_names) != len(cat_names):  # classes are matched across split files by name
        raise AnnotationError(f"{str(path)!r}: category names are not unique")
    index = {name: i + 1 for i, name in enumerate(class_names)}
    image_dir = Path(image_dir) if image_dir is not None else coco_image_dir(path)
    records = []
    for im in tqdm(coco.images, desc=f"check {path.name}", leave=False, disable=len(coco.images) < 500):
        image_id = im["id"]
        p = path_inside(image_dir, im["file_name"], path, "file_name", AnnotationError)
        if not p.is_file():
            raise ConfigError(f"{str(path)!r}: image {str(p)!r} does not exist")
        size = _image_size(p, strict, report)
        if size is None:
            continue
        objs = coco.annotations.get(image_id, [])
        boxes = [
            [float(x), float(y), float(x) + float(w), float(y) + float(h)] for x, y, w, h in (a["bbox"] for a in objs)
        ]
        dropped: list[str] = []
        keep = sanitize_boxes(boxes, size[0], size[1], report, invalid=invalid, source=f"{path} (image {image_id})",
                              names=[cat_names[a["category_id"]] for a in objs], dropped=dropped)  # fmt: skip
        crowd = [bool(objs[i].get("iscrowd", 0)) for i in keep]
        report.crowd += sum(crowd)
        rec = DetectionRecord(str(p), size[0], size[1], [boxes[i] for i in keep],
                              [index[cat_names[objs[i]["category_id"]]] for i in keep], crowd, dropped)  # fmt: skip
        report.empty_images += not any(not c for c in rec.iscrowd)
        records.append(rec)
    return class_names, records


def load_detection_dataset(
    data: str | Path, strict: bool = False, report: DetectionReport | None = None, invalid: str = "drop"
) -> tuple[list[str], dict[str, list[DetectionRecord]]]:
    """Any supported layout → ``(class_names, {split: records})`` (:mod:`mnv2.data.splits`: each split the data
    defines, or ``all``). ``invalid``: what an invalid box is, ``"drop"`` (counted in ``report``) or ``"error"``
    (:func:`sanitize_boxes`)."""
    root = Path(data)
    report = report if report is not None else DetectionReport()
    if invalid not in INVALID_BOXES:
        raise ConfigError(f"invalid must be one of {INVALID_BOXES}, got {invalid!r}")
    if not root.exists():
        raise ConfigError(f"data path {str(root)!r} does not exist")
    if root.suffix.lower() == ".json":
        names, records = load_coco(root, strict=strict, report=report, invalid=invalid)
        return names, {ALL: records}
    from mnv2.data.yolo import YAML_SUFFIXES, find_data_yaml, load_yolo  # yolo.py builds on this module

    if root.suffix.lower() in YAML_SUFFIXES:
        return load_yolo(root, strict, report, invalid)
    if is_voc(root):
        return load_voc(root, strict, report, invalid)
    if (yaml_file := find_data_yaml(root)) is not None:
        return load_yolo(yaml_file, strict, report, invalid)
    files = coco_split_files(root) if root.is_dir() else {}
    if files:
        loaded = {s: load_coco(p, strict=strict, report=report, invalid=invalid) for s, p in files.items()}
        names = sorted({n for names, _ in loaded.values() for n in names})
        out = {}
        for s, (split_names, records) in loaded.items():
            remap = {i + 1: names.index(n) + 1 for i, n in enumerate(split_names)}
            for r in records:
                r.labels = [remap[label] for label in r.labels]
            out[s] = records
        return names, out
    raise ConfigError(
        f"{str(root)!r} is not a detection dataset: expected a VOC folder (images/ + annotations/*.xml), a COCO "
        "annotation .json, a folder with annotations/instances_{train,val}*.json or {train,val}/*.json, or a YOLO "
        "data.yaml (or a folder holding one)"
    )


def read_train_val(data: str | Path, val_split: float = 0.1, seed: int = 0, strict: bool = False) -> TrainVal:
    """Train and val records of ``data``: its own split, else a seeded ``val_split`` fraction as ``"val"``
    (:func:`mnv2.data.splits.train_val`), with the validation split's own name."""
    report = DetectionReport()
    names, splits = load_detection_dataset(data, strict, report)
    train, val, val_name = checked_train_val(splits, val_split, seed, data)
    return TrainVal(names, train, val, val_name, report)


def train_val_records(
    data: str | Path, val_split: float = 0.1, seed: int = 0, strict: bool = False
) -> tuple[list[str], list[DetectionRecord], list[DetectionRecord], DetectionReport]:
    """``(class_names, train, val, report)`` of :func:`read_train_val`."""
    read = read_train_val(data, val_split, seed, strict)
    return read.class_names, read.train, read.val, read.report  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- transforms
def resize_window(
    image: torch.Tensor, window: tuple[int, int, int, int], size: int, fill: tuple[float, ...], boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``window`` ``(x0, y0, x1, y1)`` (pixels; may reach past the image, where it is ``fill``) of a uint8
    ``[3, H, W]`` image and resize it to ``size`` x ``size`` (bilinear, antialiased); map pixel corner ``boxes``
    into the result as normalised corners, clipped to it.

    Only the part of the window inside the image is resampled, so a zoom-out costs no more than the image itself;
    boxes go through exactly the mapping the pasted pixels went through.
    """
    _, h, w = image.shape
    wx0, wy0, wx1, wy1 = window
    sx, sy = size / (wx1 - wx0), size / (wy1 - wy0)
    ix0, iy0, ix1, iy1 = max(wx0, 0), max(wy0, 0), min(wx1, w), min(wy1, h)
    out = torch.tensor(fill, dtype=torch.float32).view(3, 1, 1).expand(3, size, size).clone()
    ox0, ox1 = round((ix0 - wx0) * sx), round((ix1 - wx0) * sx)
    oy0, oy1 = round((iy0 - wy0) * sy), round((iy1 - wy0) * sy)
    if ix1 > ix0 and iy1 > iy0 and ox1 > ox0 and oy1 > oy0:
        region = image[:, iy0:iy1, ix0:ix1].float().div_(255)[None]
        if region.shape[-2:] != (oy1 - oy0, ox1 - ox0):
            region = F.interpolate(region, size=(oy1 - oy0, ox1 - ox0), mode="bilinear", antialias=True,
                                   align_corners=False)  # fmt: skip
        out[:, oy0:oy1, ox0:ox1] = region[0].clamp_(0, 1)
        kx, ky = (ox1 - ox0) / (ix1 - ix0), (oy1 - oy0) / (iy1 - iy0)
        mapped = torch.stack(
            [(boxes[:, 0] - ix0) * kx + ox0, (boxes[:, 1] - iy0) * ky + oy0,
             (boxes[:, 2] - ix0) * kx + ox0, (boxes[:, 3] - iy0) * ky + oy0], dim=1,
        )  # fmt: skip
    else:
        mapped = torch.stack([(boxes[:, 0] - wx0) * sx, (boxes[:, 1] - wy0) * sy,
                              (boxes[:, 2] - wx0) * sx, (boxes[:, 3] - wy0) * sy], dim=1)  # fmt: skip
    return out, (mapped / size).clamp_(0, 1).reshape(-1, 4)


@dataclass(frozen=True)
class DetectionAugment:
    """SSD train augmentation.

    Attributes:
        expand_prob, expand_max: zoom out with this probability onto a canvas up to ``expand_max`` times the image
            side, filled with the mean pixel (SSD: 0.5, 4).
        crop_skip: probability of keeping the whole (expanded) image (TF ``random_coef`` 0.15).
        min_object_covered: the crop must cover at least one of these fractions (drawn per image) of some box;
            boxes covered less are dropped (TF ``overlap_thresh``, the same list).
        aspect_ratio_range, area_range: of the crop (width / height; fraction of the image): (0.5, 2), (0.1, 1).
        max_attempts: crop draws before giving up and keeping the whole image (TF 100).
        hflip: probability of a horizontal flip.
        photometric: probability of brightness (±32/255), contrast and saturation (×0.5-1.5) and hue (±18°)
            jitter, in random order (SSD's photometric distortion; kornia ``ColorJitter``).
    """

    expand_prob: float = 0.5
    expand_max: float = 4.0
    crop_skip: float = 0.15
    min_object_covered: tuple[float, ...] = MIN_OBJECT_COVERED
    aspect_ratio_range: tuple[float, float] = (0.5, 2.0)
    area_range: tuple[float, float] = (0.1, 1.0)
    max_attempts: int = 100
    hflip: float = 0.5
    photometric: float = 0.5


def _rand() -> float:
    return float(torch.rand(()))  # torch's RNG: seeded per epoch in the main process and per DataLoader worker


def sample_crop(
    width: int, height: int, boxes: torch.Tensor, aug: DetectionAugment
) -> tuple[tuple[int, int, int, int], float] | None:
    """An SSD random crop ``((x0, y0, x1, y1), min_covered)`` of a ``width`` x ``height`` canvas, or ``None`` for
    the whole canvas (TF ``ssd_random_crop``: one ``min_object_covered`` drawn per image, then
    ``sample_distorted_bounding_box``-style draws of area and aspect until the crop covers that fraction of at least
    one box)."""
    if _rand() < aug.crop_skip:
        return None
    min_cov = aug.min_object_covered[int(torch.randint(len(aug.min_object_covered), ()))]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for _ in range(aug.max_attempts):
        area = width * height * (aug.area_range[0] + _rand() * (aug.area_range[1] - aug.area_range[0]))
        ratio = aug.aspect_ratio_range[0] + _rand() * (aug.aspect_ratio_range[1] - aug.aspect_ratio_range[0])
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if not (1 <= w <= width and 1 <= h <= height):
            continue
        x0 = int(torch.randint(width - w + 1, ()))
        y0 = int(torch.randint(height - h + 1, ()))
        if len(boxes) == 0:
            return (x0, y0, x0 + w, y0 + h), min_cov
        covered = _intersection(boxes, (x0, y0, x0 + w, y0 + h)) / areas
        if bool((covered >= min_cov).any()):
            return (x0, y0, x0 + w, y0 + h), min_cov
    return None


def _intersection(boxes: torch.Tensor, window: tuple[float, float, float, float]) -> torch.Tensor:
    iw = (boxes[:, 2].clamp(max=window[2]) - boxes[:, 0].clamp(min=window[0])).clamp(min=0)
    ih = (boxes[:, 3].clamp(max=window[3]) - boxes[:, 1].clamp(min=window[1])).clamp(min=0)
    return iw * ih


# A box cut by a tile's border is kept when at least this share of its area lies inside (SAHI's slicing default is
# 0.1 for training; a box mostly outside its tile is a fragment the model cannot recognise, so half, as the merge's
# intersection-over-smaller of 0.5).
TILE_MIN_VISIBLE = 0.5


def crop_to_window(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, window, *extra: torch.Tensor):
    """``image`` ``[3, H, W]`` cut to the pixel ``window`` ``(x0, y0, x1, y1)``, with the boxes shifted into it and
    clipped to it; a box with under :data:`TILE_MIN_VISIBLE` of its area inside is dropped (with its label and the
    ``extra`` per-box tensors)."""
    x0, y0, x1, y1 = window
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = _intersection(boxes, window) >= TILE_MIN_VISIBLE * area.clamp(min=1e-9)
    shift = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    bound = torch.tensor([x1 - x0, y1 - y0, x1 - x0, y1 - y0], dtype=boxes.dtype)
    inside = torch.minimum((boxes[keep] - shift).clamp(min=0), bound)
    return (image[:, y0:y1, x0:x1], inside, labels[keep], *(e[keep] for e in extra))


class DetectionTrainTransform:
    """uint8 ``[3, H, W]`` image, pixel boxes, labels → normalised ``[3, S, S]`` input, normalised boxes, labels."""

    def __init__(self, pre: Preprocessing, aug: DetectionAugment | None = None, tile: int | None = None) -> None:
        import kornia.augmentation as K

        self.pre, self.aug, self.tile = pre, aug or DetectionAugment(), tile
        a = self.aug
        self.color = K.ColorJitter(32 / 255, 0.5, 0.5, 0.05, p=a.photometric) if a.photometric > 0 else None

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
        if self.tile is not None:  # 0. one random tile of the full-size image, as `predict --tile` will cut them
            _, h, w = image.shape
            x0, y0 = (
                int(torch.randint(max(w - self.tile, 0) + 1, ())),
                int(torch.randint(max(h - self.tile, 0) + 1, ())),
            )
            image, boxes, labels = crop_to_window(image, boxes, labels, (x0, y0, min(x0 + self.tile, w),
                                                                         min(y0 + self.tile, h)))  # fmt: skip
        a, (_, h, w) = self.aug, image.shape
        # 1. zoom out: the canvas as a window in image coordinates (the image sits at a random offset inside it)
        canvas = (0, 0, w, h)
        if _rand() < a.expand_prob and a.expand_max > 1:
            r = 1 + _rand() * (a.expand_max - 1)
            cw, ch = round(w * r), round(h * r)
            left, top = int(torch.randint(cw - w + 1, ())), int(torch.randint(ch - h + 1, ()))
            canvas = (-left, -top, cw - left, ch - top)
        # 2. SSD random crop of the canvas, in image coordinates
        window = canvas
        shifted = boxes - torch.tensor([canvas[0], canvas[1], canvas[0], canvas[1]], dtype=boxes.dtype)
        crop = sample_crop(canvas[2] - canvas[0], canvas[3] - canvas[1], shifted, a)
        if crop is not None:
            (x0, y0, x1, y1), min_cov = crop
            window = (canvas[0] + x0, canvas[1] + y0, canvas[0] + x1, canvas[1] + y1)
            inter = _intersection(boxes, window)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            # TF: prune_completely_outside_window, then prune_non_overlapping_boxes(min_overlap=overlap_thresh)
            keep = (inter > 0) & (inter >= min_cov * area)
            boxes, labels = boxes[keep], labels[keep]
        # 3. one resample of the window to the input size (fill: the mean pixel, 0 after normalisation)
        x, nboxes = resize_window(image, window, self.pre.input_size, self.pre.mean, boxes)
        keep = (nboxes[:, 2] > nboxes[:, 0]) & (nboxes[:, 3] > nboxes[:, 1])
        nboxes, labels = nboxes[keep], labels[keep]
        # 4. horizontal flip
        if _rand() < a.hflip:
            x = x.flip(-1)
            nboxes = torch.stack([1 - nboxes[:, 2], nboxes[:, 1], 1 - nboxes[:, 0], nboxes[:, 3]], dim=1)
        # 5. photometric distortion (moves no box)
        if self.color is not None:
            x = self.color(x[None])[0].clamp_(0, 1)
        return normalize(x, self.pre), nboxes, labels


def eval_tensor(image: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Eval preprocessing for detection: the whole uint8 ``[3, H, W]`` image resized to the input size (no crop,
    aspect not kept: SSD's ``fixed_shape_resizer``), normalised."""
    _, h, w = image.shape
    x, _ = resize_window(image, (0, 0, w, h), pre.input_size, pre.mean, torch.zeros(0, 4))
    return normalize(x, pre)


# ----------------------------------------------------------------------------------------------- datasets
class DetectionDataset(torch.utils.data.Dataset):
    """Records → ``(image [3, S, S] normalised, target)``; ``train=False`` gives the eval preprocessing and adds the
    target's ``size`` (original ``[H, W]``) and ``iscrowd``."""

    def __init__(
        self, records: list[DetectionRecord], pre: Preprocessing, train: bool, aug: DetectionAugment | None = None,
        tile: int | None = None,
    ) -> None:  # fmt: skip
        self.records, self.pre, self.train = records, pre, train
        self.transform = DetectionTrainTransform(pre, aug, tile) if train else None
        # evaluation on tiles: each image's grid of tiles (``predict --tile``'s, default overlap), one sample each
        self.items: list[tuple[int, tuple[int, int, int, int] | None]] = [(i, None) for i in range(len(records))]
        if tile is not None and not train:
            self.items = [(i, w) for i, r in enumerate(records)
                          for w in tile_windows(r.width, r.height, tile, DEFAULT_OVERLAP)]  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        index, window = self.items[i]
        r = self.records[index]
        image = to_uint8_tensor(load_image(r.path))
        boxes = torch.tensor(r.boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(r.labels, dtype=torch.long)
        crowd = torch.tensor(r.iscrowd, dtype=torch.bool)
        if self.transform is not None:
            boxes, labels = boxes[~crowd], labels[~crowd]
            x, nboxes, labels = self.transform(image, boxes, labels)
            return x, {"boxes": nboxes, "labels": labels}
        if window is not None:
            image, boxes, labels, crowd = crop_to_window(image, boxes, labels, window, crowd)
        return eval_tensor(image, self.pre), self._target(image.shape[1:], boxes, labels, crowd)

    @staticmethod
    def _target(size, boxes, labels, crowd) -> dict:
        h, w = int(size[0]), int(size[1])
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        return {"boxes": boxes / scale, "labels": labels, "iscrowd": crowd, "size": torch.tensor([h, w])}

    def raw(self, i: int) -> tuple[Image.Image, dict]:
        """Image ``i`` decoded (RGB, upright) and its eval target: for evaluating the inference half, tiles
        included (``mnv2 eval --tile``)."""
        r = self.records[i]
        boxes = torch.tensor(r.boxes, dtype=torch.float32).reshape(-1, 4)
        crowd = torch.tensor(r.iscrowd, dtype=bool)
        target = self._target((r.height, r.width), boxes, torch.tensor(r.labels, dtype=torch.long), crowd)
        return load_image(r.path), target


def collate(batch: list) -> tuple[torch.Tensor, list[dict]]:
    """Stack the images; keep the targets as a list (their box counts differ)."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]


# The shared epoch-seeded loader (``mnv2.data.batches``) with this task's collate and its own RNG stream.
DetectionBatches = functools.partial(LoaderBatches, collate_fn=collate, own_rng=True)


def build_detection_data(
    data: str, pre: Preprocessing, batch_size: int, eval_batch_size: int, *, val_split: float = 0.1,
    strict: bool = False, workers: int = 2, seed: int = 0, rank: int = 0, world: int = 1, pin: bool = False,
    train_limit: int | None = None, val_limit: int | None = None, aug: DetectionAugment | None = None,
    tile: int | None = None,
) -> DataBundle:  # fmt: skip
    """A :class:`~mnv2.data.builder.DataBundle` of detection batches (:func:`mnv2.data.builder.build_bundle`; the
    val split's own name, :func:`read_train_val`). ``tile``: train on a random tile of that many pixels of each
    full-size image and validate on every image's tiles (issue 24, 4: small objects in large images), as ``predict
    --tile`` cuts them."""
    dataset = functools.partial(DetectionDataset, pre=pre, aug=aug, tile=tile)
    return build_bundle(
        read_train_val(data, val_split, seed, strict), dataset, pre, batch_size, eval_batch_size,
        batches=DetectionBatches, workers=workers, seed=seed, rank=rank, world=world, pin=pin,
        train_limit=train_limit, val_limit=val_limit,
    )  # fmt: skip


def build_detection_eval_data(
    data: str, pre: Preprocessing, batch_size: int, *, split: str | None = None, workers: int = 2,
    strict: bool = False, limit: int | None = None, seed: int = 0, invalid: str = "error", **_,
) -> tuple[LoaderBatches, list[str], DetectionReport]:  # fmt: skip
    """Eval batches, class names and report of ``data``: ``split`` (any the data defines), else its validation
    split, else every image (:func:`mnv2.data.splits.eval_split_name`). An invalid box of the evaluated images is an
    error unless ``invalid="drop"`` (the metric must not be computed on ground truth changed in silence); the report
    counts those images' dropped boxes."""
    if invalid not in INVALID_BOXES:
        raise ConfigError(f"invalid must be one of {INVALID_BOXES}, got {invalid!r}")
    report = DetectionReport()
    names, splits = load_detection_dataset(data, strict, report, "drop")
    _, records = eval_records(splits, split, data, limit=limit, seed=seed)
    dropped = [m for r in records for m in r.dropped]  # the evaluated images' only: the other splits do not count
    if dropped and invalid == "error":
        raise AnnotationError(f"{dropped[0]}; {INVALID_ADVICE}")
    report.invalid, report.invalid_example = len(dropped), dropped[0] if dropped else None
    return DetectionBatches(DetectionDataset(records, pre, False), batch_size, False, workers), names, report
