"""Data formats and the one split policy (issue 29, 4): any split a dataset's lists define is a split, the seeded
split and limits of mnv2.data.splits, the YOLO detection reader against the VOC one on the same raccoon photos, and
COCO segmentation polygons and RLE against the CamVid label PNGs they were written from."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mnv2.data.builder import TrainVal, build_bundle, checked_train_val, eval_records
from mnv2.data.detection import (
    AnnotationError,
    build_detection_eval_data,
    load_coco,
    load_detection_dataset,
    train_val_records,
)
from mnv2.data.folder import ScanReport
from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
from mnv2.data.segmentation import (
    IGNORE_INDEX,
    SegmentationDataError,
    SegmentationDataset,
    build_segmentation_eval_data,
    read_segmentation_data,
)
from mnv2.data.splits import eval_split_name, limit_samples, seeded_split, train_val
from mnv2.data.yolo import label_path
from mnv2.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
RACCOON = FIXTURES / "detection" / "raccoon"
CAMVID = FIXTURES / "segmentation" / "camvid"
PRE = Preprocessing(input_size=64, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def names(records) -> list[str]:
    return [Path(r.path).name for r in records]


# ----------------------------------------------------------------------------------------------- splits
def test_seeded_split_and_limits_are_the_policy_every_task_uses():
    items = list(range(20))
    train, val = seeded_split(items, 0.25, seed=3)
    assert len(val) == 5 and sorted(train + val) == items and seeded_split(items, 0.25, seed=3) == (train, val)
    assert seeded_split([7], 0.5, 0) == ([7], [])  # a single item is never all val
    # stratified: every group with two or more items is in both parts
    pairs = [(i, i % 3) for i in range(12)]
    train, val = seeded_split(pairs, 0.25, 0, key=lambda p: p[1])
    assert {g for _, g in train} == {g for _, g in val} == {0, 1, 2}
    # limits: the same items either way; in order, or as drawn (training's)
    ordered, drawn = limit_samples(items, 6, 1), limit_samples(items, 6, 1, keep_order=False)
    assert ordered == sorted(drawn) and len(ordered) == 6 and limit_samples(items, None, 1) == items
    # which split trains and which validates
    splits = {"train": [1, 2], "test": [3], "extra": [4]}
    assert train_val(splits, 0.5, 0, "d") == ([1, 2], [3], "test")  # no val: test stands in for it
    assert train_val({"all": [1, 2, 3, 4]}, 0.5, 0, "d")[2] == "val"
    assert eval_split_name(splits, None, "d") == "test" and eval_split_name(splits, "extra", "d") == "extra"
    with pytest.raises(ConfigError, match=r"has no 'nope' split \(it has: train, test, extra\)"):
        eval_split_name(splits, "nope", "d")


class Numbers(torch.utils.data.Dataset):
    """A record type no task has: each record a number, its sample a [1, 1, 1] tensor of it."""

    def __init__(self, records: list[int], train: bool) -> None:
        self.records, self.train = records, train

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        return torch.full((1, 1, 1), float(self.records[i])), i


def test_the_one_builder_limits_batches_and_checks_records_of_any_type():
    train, val, name = checked_train_val({"all": list(range(10))}, 0.3, 0, "d")
    assert (sorted(train + val), len(val), name) == (list(range(10)), 3, "val")
    read = TrainVal(["a", "b"], train, val, name, ScanReport())
    bundle = build_bundle(read, Numbers, PRE, 2, 4, workers=0, seed=1, train_limit=4, image_size=len)
    # training's limits: a seeded sample in drawn order; the train part augments, val does not
    assert bundle.train.dataset.records == limit_samples(train, 4, 1, keep_order=False) and bundle.train.dataset.train
    assert bundle.val.dataset.records == val and not bundle.val.dataset.train
    assert (len(bundle.train), len(bundle.val), bundle.val_name, bundle.image_size) == (2, 1, "val", 3)
    x, _ = next(iter(bundle.train.epoch(0)))
    assert x.shape == (2, 1, 1, 1) and set(x.flatten().tolist()) <= set(map(float, bundle.train.dataset.records))
    # a scan may drop records; a part it leaves empty is an error naming the data
    with pytest.raises(ConfigError, match="'d' has no readable validation images"):
        checked_train_val({"train": [1, 2], "val": [3]}, 0.1, 0, "d", scan=lambda rs, part: [r for r in rs if r != 3])
    # evaluation: the validation split by default, a seeded sample in order, and only the sample is scanned
    scanned = []
    split, records = eval_records({"train": [1, 2], "val": list(range(10))}, None, "d", limit=3, seed=0,
                                  scan=lambda rs, part: scanned.append((part, rs)) or rs)  # fmt: skip
    assert (split, records, scanned) == ("val", limit_samples(range(10), 3, 0), [("val", records)])
    with pytest.raises(ConfigError, match=r"no readable images in 'd' \(train split\)"):
        eval_records({"train": [1, 2]}, "train", "d", scan=lambda rs, part: [])


def voc_with_lists(root: Path, lists: dict[str, list[str]]) -> Path:
    """The raccoon fixture in the canonical VOC layout, with ``ImageSets/Main/<split>.txt`` lists."""
    for src, dst in (("images", "JPEGImages"), ("annotations", "Annotations")):
        shutil.copytree(RACCOON / src, root / dst)
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, stems in lists.items():
        (main / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


def test_any_list_of_a_voc_folder_is_a_split_eval_can_read(tmp_path):
    lists = {"train": ["raccoon-18", "raccoon-39"], "val": ["raccoon-109"], "test": ["raccoon-12", "raccoon-126"]}
    root = voc_with_lists(tmp_path / "voc", lists)
    # VOC's per-class lists (<class>_<split>.txt: "name 1/-1") are not splits
    (root / "ImageSets" / "Main" / "raccoon_train.txt").write_text("raccoon-18  1\nraccoon-39  1\n")
    names_, splits = load_detection_dataset(root)
    assert names_ == ["raccoon"] and sorted(splits) == ["test", "train", "val"]
    batches, _, _ = build_detection_eval_data(str(root), PRE, 2, split="test", workers=0)
    assert names(batches.dataset.records) == ["raccoon-12.jpg", "raccoon-126.jpg"]
    batches, _, _ = build_detection_eval_data(str(root), PRE, 2, workers=0)  # default: the validation split
    assert names(batches.dataset.records) == ["raccoon-109.jpg"]
    with pytest.raises(ConfigError, match=r"has no 'trainval' split \(it has: test, train, val\)"):
        build_detection_eval_data(str(root), PRE, 2, split="trainval", workers=0)
    _, train, val, _ = train_val_records(root)
    assert names(train) == ["raccoon-18.jpg", "raccoon-39.jpg"] and names(val) == ["raccoon-109.jpg"]
    # without a val list, the images the train list leaves out are val (as before); test stays its own split
    (root / "ImageSets" / "Main" / "val.txt").unlink()
    _, splits = load_detection_dataset(root)
    assert sorted(names(splits["val"])) == ["raccoon-109.jpg", "raccoon-12.jpg", "raccoon-126.jpg"]


def test_training_names_the_validation_split_it_reads(tmp_path):
    """Epoch lines and metrics.csv say which split the val numbers are on: a ``valid`` list or folder is ``valid``,
    as segmentation has always said; a split cut from the train images is ``val``."""
    from conftest import make_image_folder
    from mnv2.data.detection import build_detection_data
    from mnv2.data.loaders import build_data
    from mnv2.data.transforms import AugmentConfig

    root = voc_with_lists(tmp_path / "voc", {"train": ["raccoon-18", "raccoon-39"], "valid": ["raccoon-109"]})
    bundle = build_detection_data(str(root), PRE, 2, 2, workers=0)
    assert bundle.val_name == "valid" and names(bundle.val.dataset.records) == ["raccoon-109.jpg"]
    (root / "ImageSets" / "Main" / "valid.txt").unlink()
    assert build_detection_data(str(root), PRE, 2, 2, workers=0).val_name == "val"
    make_image_folder(tmp_path / "folder" / "train", n=4)
    make_image_folder(tmp_path / "folder" / "valid", n=2, seed=1)
    assert build_data(str(tmp_path / "folder"), PRE, AugmentConfig(), 2, 2, workers=0).val_name == "valid"


# ----------------------------------------------------------------------------------------------- YOLO
def voc_to_yolo(records: dict[str, list], class_names: list[str], root: Path, roboflow: bool = False) -> Path:
    """Write detection records as a YOLO dataset: Ultralytics' ``images/<split>`` + ``labels/<split>`` with names
    as a mapping, or Roboflow's ``<split>/images`` + ``<split>/labels`` (val as ``valid``) with ``../`` paths."""
    entries = {}
    for split, recs in records.items():
        folder = ("valid" if split == "val" else split) if roboflow else split
        images = root / folder / "images" if roboflow else root / "images" / folder
        images.mkdir(parents=True)
        entries[split] = f"../{folder}/images" if roboflow else f"images/{folder}"
        for r in recs:
            shutil.copy(r.path, images / Path(r.path).name)
            lines = []
            for (x1, y1, x2, y2), label in zip(r.boxes, r.labels):
                cx, cy, w, h = (
                    (x1 + x2) / 2 / r.width,
                    (y1 + y2) / 2 / r.height,
                    (x2 - x1) / r.width,
                    (y2 - y1) / r.height,
                )
                lines.append(f"{label - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
            label = label_path(images / Path(r.path).name)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(lines))
    names_ = class_names if roboflow else {i: n for i, n in enumerate(class_names)}
    (root / "data.yaml").write_text(yaml.safe_dump({**entries, "nc": len(class_names), "names": names_}))
    return root


def assert_same_records(a: dict, b: dict) -> None:
    """The same splits, images, sizes and labels; boxes within a pixel (an image folder is read in name order)."""
    assert sorted(a) == sorted(b)
    for split in a:
        ra_, rb_ = (sorted(x[split], key=lambda r: Path(r.path).name) for x in (a, b))
        assert names(ra_) == names(rb_), split
        for ra, rb in zip(ra_, rb_):
            assert (ra.width, ra.height, ra.labels) == (rb.width, rb.height, rb.labels)
            assert np.allclose(ra.boxes, rb.boxes, atol=1.0, rtol=0), (ra.path, ra.boxes, rb.boxes)


@pytest.mark.parametrize("roboflow", [False, True])
def test_yolo_reads_the_boxes_the_voc_reader_reads(tmp_path, roboflow):
    voc_names, voc = load_detection_dataset(RACCOON)
    root = voc_to_yolo(voc, voc_names, tmp_path / "yolo", roboflow)
    assert (root / ("valid/labels" if roboflow else "labels/val") / "raccoon-126.txt").is_file()
    for data in (root, root / "data.yaml"):  # --data takes the yaml or its folder
        yolo_names, yolo = load_detection_dataset(data)
        assert yolo_names == voc_names
        assert_same_records(voc, yolo)
    _, train, val, _ = train_val_records(root)
    assert sorted(names(train)) == sorted(names(voc["train"])) and names(val) == names(voc["val"])


def test_yolo_empty_and_missing_labels_and_malformed_lines(tmp_path):
    voc_names, voc = load_detection_dataset(RACCOON)
    root = voc_to_yolo(voc, voc_names, tmp_path / "yolo")
    labels = root / "labels" / "train"
    (labels / "raccoon-18.txt").write_text("")  # empty: an image without objects
    (labels / "raccoon-39.txt").unlink()  # missing: the same
    (labels / "raccoon-12.txt").write_text("0 0.5 0.5 0.2 0.2\n\n0 0.1 0.1 0.3 0.1 0.3 0.3\n")  # a box, a polygon
    _, splits = load_detection_dataset(root)
    records = {Path(r.path).stem: r for r in splits["train"]}
    assert records["raccoon-18"].boxes == [] and records["raccoon-39"].boxes == []
    w, h = records["raccoon-12"].width, records["raccoon-12"].height
    assert np.allclose(records["raccoon-12"].boxes, [[0.4 * w, 0.4 * h, 0.6 * w, 0.6 * h],
                                                     [0.1 * w, 0.1 * h, 0.3 * w, 0.3 * h]])  # fmt: skip
    for text, needle in (("0 0.5 0.5 0.2\n", "4 values"), ("0 0.5 zero 0.2 0.2\n", "not numbers"),
                         ("1 0.5 0.5 0.2 0.2\n", "class '1' is not a class id 0..0")):  # fmt: skip
        (labels / "raccoon-12.txt").write_text("0 0.5 0.5 0.2 0.2\n" + text)
        with pytest.raises(AnnotationError, match=rf"raccoon-12\.txt' line 2: .*{needle}"):
            load_detection_dataset(root)
    # a box far outside its image is invalid: an error in evaluation, dropped and counted in training
    (labels / "raccoon-12.txt").write_text("0 1.5 0.5 0.2 0.2\n")
    with pytest.raises(AnnotationError, match=r"raccoon-12\.txt': object 0 \(raccoon\) .* outside"):
        build_detection_eval_data(str(root), PRE, 2, split="train", workers=0)
    assert train_val_records(root)[3].invalid == 1


# ----------------------------------------------------------------------------------------------- COCO segmentation
CAMVID_NAMES = json.loads((CAMVID / "classes.json").read_text())["names"]  # 11 classes; 11 = Unlabelled


def outer_polygons(region: np.ndarray) -> list[np.ndarray]:
    """The outer boundary of each connected part of a binary mask, ``[N, 2]`` (x, y) in COCO's pixel-edge
    coordinates: contourpy's marching squares at 0.5 (matplotlib's contouring) passes mid-way between pixel centres,
    on the pixels' edges. Holes are left out: what fills them is painted after (smaller shapes come later)."""
    import contourpy

    z = np.pad(region.astype(np.float64), 1)  # closed rings at the image border
    points, offsets = contourpy.contour_generator(z=z, fill_type="OuterOffset").filled(0.5, 1.5)
    return [pts[offs[0] : offs[1]] - 1 + 0.5 for pts, offs in zip(points, offsets)]


def area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2


def camvid_instances(pngs: list[Path], encoding: str) -> dict:
    """An instances file of CamVid label maps: classes 0-10 as categories 1-11, one annotation per connected part
    (``polygons``, largest first, so nested parts paint over their surroundings) or per class (``rle``, compressed);
    Unlabelled (11) as a crowd region in uncompressed RLE (column-major runs, first a run of 0s), painted last."""
    from pycocotools import mask as mask_utils

    cats = [{"id": i + 1, "name": n, "supercategory": "camvid"} for i, n in enumerate(CAMVID_NAMES)]
    out = {"images": [], "annotations": [], "categories": cats}
    for image_id, png in enumerate(pngs, 1):
        labels = np.asarray(Image.open(png))
        h, w = labels.shape
        out["images"].append({"id": image_id, "file_name": png.name, "width": w, "height": h})
        shapes = []
        for c in range(len(CAMVID_NAMES)):
            region = labels == c
            if not region.any():
                continue
            if encoding == "rle":
                rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
                shapes.append((float(region.sum()), c + 1, 0, {"size": [h, w], "counts": rle["counts"].decode()}))
            else:
                shapes += [(area(r), c + 1, 0, [r.ravel().round(2).tolist()]) for r in outer_polygons(region)]
        shapes.sort(key=lambda s: -s[0])
        flat = (labels == 11).T.ravel()  # uncompressed RLE runs, column-major, starting with 0s
        edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        counts = ([0] if flat[0] else []) + counts
        shapes.append((0.0, 1, 1, {"size": [h, w], "counts": counts}))
        for _, cat, crowd, seg in shapes:
            out["annotations"].append({"id": len(out["annotations"]) + 1, "image_id": image_id, "category_id": cat,
                                       "iscrowd": crowd, "segmentation": seg})  # fmt: skip
    return out


def expected_mask(png: Path) -> np.ndarray:
    labels = np.asarray(Image.open(png)).astype(np.int64)
    return np.where(labels == 11, IGNORE_INDEX, labels + 1)  # classes shift by the background; Unlabelled: ignore


def near_a_border(labels: np.ndarray, px: int) -> np.ndarray:
    """Pixels within ``px`` (chessboard distance) of a pixel of another label."""
    out = np.zeros(labels.shape, dtype=bool)
    padded = np.pad(labels, px, mode="edge")
    h, w = labels.shape
    for dy in range(-px, px + 1):
        for dx in range(-px, px + 1):
            out |= padded[px + dy : px + dy + h, px + dx : px + dx + w] != labels
    return out


def camvid_as_coco(root: Path, encoding: str) -> Path:
    """The CamVid fixture as ``annotations/instances_{train,val}.json`` with images in ``train/`` and ``val/``."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(CAMVID / split, root / split)
        pngs = sorted((CAMVID / f"{split}annot").glob("*.png"))
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(camvid_instances(pngs, encoding)))
    return root


def test_coco_polygons_paint_the_masks_of_the_label_pngs_they_were_traced_from(tmp_path):
    root = camvid_as_coco(tmp_path / "coco", "polygons")
    d = read_segmentation_data(root)
    assert d.class_names == ["background", *CAMVID_NAMES] and d.val_name == "val"
    assert (len(d.train), len(d.val)) == (3, 1)
    for records in (d.train, d.val):
        ds = SegmentationDataset(records, d.spec, len(d.class_names), PRE, train=False)
        for i, r in enumerate(records):
            png = CAMVID / f"{Path(r.image).parent.name}annot" / Path(r.image).name
            want, (_, got) = expected_mask(png), ds[i]
            got = got.numpy()
            assert (got == want).mean() >= 0.98, (png.name, (got == want).mean())
            # every disagreement is on a region's border, where the polygon's rasterisation rounds
            assert (got == want)[~near_a_border(want, 1)].all(), png.name
    batches, names_, _ = build_segmentation_eval_data(str(root), PRE, 1, workers=0)
    assert names_ == d.class_names and len(batches.dataset.records) == 1


def test_coco_rle_paints_the_masks_exactly_and_bad_segmentations_name_the_annotation(tmp_path):
    pngs = sorted((CAMVID / "trainannot").glob("*.png"))
    js = tmp_path / "coco" / "instances.json"  # one file named directly: its images in images/ beside it
    shutil.copytree(CAMVID / "train", js.parent / "images")
    instances = camvid_instances(pngs, "rle")
    js.write_text(json.dumps(instances))
    d = read_segmentation_data(js, val_split=0.34)
    records = sorted(d.train + d.val, key=lambda r: r.image)
    assert [Path(r.image).name for r in records] == [p.name for p in pngs]
    ds = SegmentationDataset(records, d.spec, len(d.class_names), PRE, train=False)
    for i, png in enumerate(pngs):
        assert np.array_equal(ds[i][1].numpy(), expected_mask(png)), png.name
    ann = instances["annotations"][0]
    for seg, needle in (([[1, 2, 3, 4]], "not a list of at least 3"), ({"size": [9, 9], "counts": "a"}, "size")):
        ann["segmentation"] = seg
        js.write_text(json.dumps(instances))
        with pytest.raises(SegmentationDataError, match=rf"instances\.json': annotation 1: .*{needle}"):
            read_segmentation_data(js)


@pytest.mark.parametrize(
    "mend, needle",
    [
        (lambda d: d["images"].append(dict(d["images"][0])), "image id 1 is listed 2 times"),
        (lambda d: d["annotations"][0].update(image_id=7), "1 annotation(s) of image id(s) the file does not list"),
        (lambda d: d["annotations"][0].update(iscrowd="no"), "has iscrowd 'no'"),
        (lambda d: d["annotations"][0].update(category_id=9), "has unknown category_id 9"),
        (lambda d: d["categories"].append(dict(d["categories"][0])), "category id 1 is listed twice"),
        (lambda d: d.update(categories=[]), "lists no categories"),
        (lambda d: d["images"][0].update(file_name="../a.png"), "file_name '../a.png' is not a path inside"),
    ],
)
def test_both_tasks_coco_readers_refuse_a_malformed_file_with_the_same_words(tmp_path, mend, needle):
    """One COCO reader (``data.coco.read_coco``) under detection's boxes and segmentation's polygons: a file broken
    in a part they share is refused by both, naming the file."""
    (tmp_path / "images").mkdir()
    for name in "ab":
        Image.new("RGB", (40, 30)).save(tmp_path / "images" / f"{name}.png")
    poly = [[2.0, 2.0, 20.0, 2.0, 20.0, 20.0]]
    ann = dict(id=1, image_id=1, category_id=1, iscrowd=0, bbox=[2, 2, 18, 18], segmentation=poly)
    images = [dict(id=i, file_name=f"{name}.png", width=40, height=30) for i, name in ((1, "a"), (2, "b"))]
    coco = dict(images=images, annotations=[ann],
                categories=[dict(id=1, name="thing")])  # fmt: skip
    js = tmp_path / "instances.json"
    js.write_text(json.dumps(coco))
    assert load_coco(js)[0] == ["thing"] and read_segmentation_data(js, val_split=0.5).class_names[1] == "thing"
    mend(coco)
    js.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match=rf"instances\.json'.*{re.escape(needle)}"):
        load_coco(js)
    with pytest.raises(SegmentationDataError, match=rf"instances\.json'.*{re.escape(needle)}"):
        read_segmentation_data(js)
