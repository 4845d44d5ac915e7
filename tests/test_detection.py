"""SSDLite-MobileNetV2 detection (paper §6.2, issue 15): anchors, box coding, matching, NMS, COCO mAP, data that must
never give NaN, training on real raccoon photos, and the Table 6 model size."""

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from mnv2.data.detection import (
    AnnotationError,
    DetectionAugment,
    DetectionDataset,
    DetectionRecord,
    build_detection_data,
    collate,
    load_coco,
    load_detection_dataset,
    train_val_records,
)
from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
from mnv2.data.transforms import AugmentConfig
from mnv2.errors import ConfigError
from mnv2.models.mobilenetv2 import MobileNetV2, MobileNetV2Config
from mnv2.models.ssdlite import (
    SSDLite,
    SSDLiteConfig,
    anchors_for_count,
    batched_nms,
    box_iou,
    cxcywh_to_xyxy,
    decode_boxes,
    detection_loss,
    encode_boxes,
    feature_map_sizes,
    generate_anchors,
    match_anchors,
    nms,
    num_anchors,
    postprocess,
)
from mnv2.tasks import detection as task
from mnv2.tasks import get_task

RACCOON = Path(__file__).parent / "fixtures" / "detection" / "raccoon"
HEAD = SSDLiteConfig(num_classes=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(**kw) -> SimpleNamespace:
    """The TrainConfig fields the detection task reads."""
    values = dict(data=str(RACCOON), resolution=128, width=0.35, model=None, padding="torch", batch_size=4,
                  eval_batch_size=8, val_split=0.1, strict=False, workers=0, seed=0, train_limit=None, val_limit=None,
                  augment=AugmentConfig())  # fmt: skip
    values.update(kw)
    return SimpleNamespace(**values)


def tiny_model(num_classes: int = 1, **kw) -> SSDLite:
    return SSDLite(MobileNetV2Config(width_mult=0.35, **kw), SSDLiteConfig(num_classes=num_classes))


# ----------------------------------------------------------------------------------------------- anchors
def test_anchor_counts_at_300_and_320_match_the_hand_derivation_and_the_model():
    # Maps at strides 16..512 are ceil(n / 2^k): 300 → 19, 10, 5, 3, 2, 1; 320 → 20, 10, 5, 3, 2, 1. The lowest layer
    # has 3 anchors per location, the others 5 aspect ratios + the interpolated scale = 6.
    assert feature_map_sizes(300, 300) == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert feature_map_sizes(320, 320) == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert HEAD.anchors_per_location() == [3, 6, 6, 6, 6, 6]
    hand_300 = 19 * 19 * 3 + (10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1 * 1) * 6
    hand_320 = 20 * 20 * 3 + (10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1 * 1) * 6
    assert hand_300 == num_anchors(300, 300, HEAD) == 1917  # the TF model's 1,917 boxes
    assert hand_320 == num_anchors(320, 320, HEAD) == 2034
    model = tiny_model().eval()
    with torch.no_grad():
        for size, count in ((300, 1917), (320, 2034)):
            maps = model.feature_maps(torch.zeros(1, 3, size, size))
            assert [tuple(m.shape[-2:]) for m in maps] == feature_map_sizes(size, size)
            assert [m.shape[1] for m in maps] == model.feature_channels
            boxes, logits = model(torch.zeros(1, 3, size, size))
            assert boxes.shape == (1, count, 4) and logits.shape == (1, count, 2)
            assert model.anchors(size).shape == (count, 4)
            assert torch.equal(anchors_for_count(count, HEAD), model.anchors(size))
    # width 1.0: the taps are layer_15/expansion_output (576) and layer_19 (1280), then 512, 256, 256, 128
    assert SSDLite(MobileNetV2Config(), HEAD).feature_channels == [576, 1280, 512, 256, 256, 128]


def test_anchor_values_follow_create_ssd_anchors():
    a = generate_anchors(feature_map_sizes(300, 300), HEAD, (300, 300))  # (cy, cx, h, w)
    r2 = math.sqrt(2)
    # layer 0, cell (0, 0): (0.1, 1), (0.2, 2), (0.2, 1/2); centres at half a stride (1/19)
    c = 0.5 / 19
    expected = [[c, c, 0.1, 0.1], [c, c, 0.2 / r2, 0.2 * r2], [c, c, 0.2 * r2, 0.2 / r2]]
    torch.testing.assert_close(a[:3], torch.tensor(expected))
    # the next anchor is cell (0, 1): row-major over the grid, anchors fastest
    torch.testing.assert_close(a[3, :2], torch.tensor([c, 3 * c]))
    # layer 1 starts after 19*19*3: scale 0.35 with ratios 1, 2, 1/2, 3, 1/3, then sqrt(0.35 * 0.5)
    first = a[1083 : 1083 + 6]
    scales = torch.tensor([0.35] * 5 + [math.sqrt(0.35 * 0.5)])
    ratios = torch.tensor([1.0, 2.0, 0.5, 3.0, 1 / 3, 1.0]).sqrt()
    torch.testing.assert_close(first[:, 2], scales / ratios)
    torch.testing.assert_close(first[:, 3], scales * ratios)
    torch.testing.assert_close(first[:, :2], torch.full((6, 2), 0.05))
    # the last layer (1x1): scale 0.95 and the interpolated sqrt(0.95 * 1.0), centred
    torch.testing.assert_close(a[-1], torch.tensor([0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)]))
    assert HEAD.scales()[:6] == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95])


# ----------------------------------------------------------------------------------------------- box coding
def test_box_encoding_round_trip_and_hand_values():
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([torch.rand(500, 2, generator=g), 0.05 + 0.9 * torch.rand(500, 2, generator=g)], 1)
    xy = torch.rand(500, 2, generator=g) * 0.8
    boxes = torch.cat([xy, xy + 0.01 + 0.2 * torch.rand(500, 2, generator=g)], 1)
    codes = encode_boxes(boxes, anchors)
    torch.testing.assert_close(decode_boxes(codes, anchors), boxes, atol=1e-5, rtol=0)
    # a box equal to its anchor codes to 0; moved down by half the anchor height: ty = 0.5 * 10; twice as wide:
    # tw = log(2) * 5 (codes are TF's (ty, tx, th, tw))
    anchor = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    box = cxcywh_to_xyxy(anchor)
    torch.testing.assert_close(encode_boxes(box, anchor), torch.zeros(1, 4), atol=1e-5, rtol=0)
    moved = box + torch.tensor([0.0, 0.1, 0.0, 0.1])
    torch.testing.assert_close(encode_boxes(moved, anchor), torch.tensor([[5.0, 0, 0, 0]]), atol=1e-5, rtol=0)
    wide = torch.tensor([[0.1, 0.4, 0.9, 0.6]])
    torch.testing.assert_close(encode_boxes(wide, anchor), torch.tensor([[0, 0, 0, 5 * math.log(2)]]), atol=1e-5,
                               rtol=0)  # fmt: skip
    # a degenerate box stays finite (TF adds 1e-8 to sizes); wild codes decode to finite boxes
    assert torch.isfinite(encode_boxes(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), anchor)).all()
    assert torch.isfinite(decode_boxes(torch.full((1, 4), 1e4), anchor)).all()


def test_matching_thresholds_and_the_forced_match():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.6, 0.0, 1.0, 0.4]])
    gt = torch.tensor(
        [
            [0.0, 0.0, 0.45, 0.45],  # IoU 0.81 with anchor 0, 0.79 with anchor 2
            [0.5, 0.5, 0.8, 0.8],  # IoU 0.36 with anchor 1: below 0.5, matched only by force
        ]
    )
    assert box_iou(gt, anchors)[1, 1] == pytest.approx(0.36)
    assert match_anchors(gt, anchors).tolist() == [0, 1, 0, -1]
    # without the forced match, box 1 would have no anchor
    assert match_anchors(gt[:1], anchors).tolist() == [0, -1, 0, -1]
    # two boxes whose best anchor is the same: the lower index takes it (TF's argmax over one-hot rows)
    twins = torch.tensor([[0.6, 0.0, 0.9, 0.3], [0.6, 0.05, 0.95, 0.35]])
    assert match_anchors(twins, anchors)[3].item() == 0
    assert match_anchors(torch.zeros(0, 4), anchors).tolist() == [-1, -1, -1, -1]


# ----------------------------------------------------------------------------------------------- NMS
def brute_force_nms(boxes: list, scores: list, threshold: float) -> list[int]:
    """Textbook greedy NMS in plain Python floats."""

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.6, 0.9])
def test_nms_matches_brute_force_on_random_boxes(threshold):
    g = torch.Generator().manual_seed(int(threshold * 10))
    xy = torch.rand(300, 2, generator=g)
    boxes = torch.cat([xy, xy + 0.05 + 0.3 * torch.rand(300, 2, generator=g)], 1)
    scores = torch.rand(300, generator=g)
    expected = brute_force_nms(boxes.double().tolist(), scores.tolist(), threshold)
    assert nms(boxes, scores, threshold).tolist() == expected
    assert nms(boxes, scores, threshold, max_output=7).tolist() == expected[:7]
    classes = torch.randint(0, 3, (300,), generator=g)
    per_class = []
    for c in range(3):
        idx = torch.nonzero(classes == c).flatten().tolist()
        kept = brute_force_nms([boxes[i].double().tolist() for i in idx], [scores[i].item() for i in idx], threshold)
        per_class += [idx[k] for k in kept]
    expected = sorted(per_class, key=lambda i: -scores[i].item())
    assert batched_nms(boxes, scores, classes, threshold).tolist() == expected


def test_postprocess_decodes_suppresses_and_caps():
    head = SSDLiteConfig(num_classes=2, max_detections=3)
    anchors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.31, 0.31, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 2.0, 2.0]])
    codes = torch.zeros(1, 4, 4)
    logits = torch.full((1, 4, 3), -20.0)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, 2], logits[0, 3, 2] = 3.0, 2.0, 1.0, 0.5
    (out,) = postprocess(codes, logits, anchors, head)
    # anchor 1 overlaps anchor 0 (IoU 0.82 > 0.6) in the same class: suppressed; anchor 3 is clipped to the image
    assert out["labels"].tolist() == [1, 2, 2]
    torch.testing.assert_close(out["scores"], torch.tensor([3.0, 1.0, 0.5]).sigmoid())
    torch.testing.assert_close(out["boxes"][0], torch.tensor([0.2, 0.2, 0.4, 0.4]))
    torch.testing.assert_close(out["boxes"][2], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    softmax = postprocess(codes, logits, anchors, SSDLiteConfig(num_classes=2, score_fn="softmax"))[0]
    assert softmax["scores"][0] == pytest.approx(logits[0, 0].softmax(0)[1].item())


# ----------------------------------------------------------------------------------------------- mAP
def _target(boxes, labels, size=(100, 200)):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "size": torch.tensor(size)}  # fmt: skip


def _dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}  # fmt: skip


def _evaluate(detections, targets, names=("cat", "dog")):
    ev = task.evaluator(list(names))
    ev.update({"detections": detections}, targets)
    ev.reduce(lambda t: t)  # one process: the gather is the identity
    return ev.compute()


def test_map_of_hand_made_cases():
    a, b = [0.1, 0.1, 0.5, 0.6], [0.5, 0.2, 0.9, 0.9]
    targets = [_target([a, b], [1, 2]), _target([b], [1])]
    perfect = [_dets([a, b], [0.9, 0.8], [1, 2]), _dets([b], [0.7], [1])]
    r = _evaluate(perfect, targets)
    assert r["mAP"] == r["mAP50"] == r["mAP75"] == pytest.approx(1.0)
    assert r["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert r["n"] == 2 and r["loss"] is None and r["mAP_small"] is None  # no loss without raw outputs
    # one of the two cats missed: precision 1 up to recall 0.5, then nothing; COCO's 101-point interpolation
    # gives 51/101 for cat, 1.0 for dog
    one_missing = [_dets([a, b], [0.9, 0.8], [1, 2]), _dets([], [], [])]
    r = _evaluate(one_missing, targets)
    assert r["per_class"]["cat"] == pytest.approx(51 / 101)
    assert r["mAP50"] == r["mAP"] == pytest.approx((51 / 101 + 1) / 2)
    # a false positive scored above the true one halves the precision at the first recall point
    fp = [_dets([a, b, [0.0, 0.0, 0.05, 0.05]], [0.9, 0.8, 0.95], [1, 2, 2]), _dets([b], [0.7], [1])]
    assert _evaluate(fp, targets)["per_class"]["dog"] == pytest.approx(0.5)
    # no detections at all is AP 0; no ground truth at all leaves AP undefined, not 0 (issue 28, 10)
    assert _evaluate([_dets([], [], []), _dets([], [], [])], targets)["mAP"] == 0.0
    empty = _evaluate([_dets([a], [0.5], [1])], [_target([], [])])
    assert empty["mAP"] is None and empty["mAP50"] is None and empty["per_class"] == {"cat": None, "dog": None}


def test_evaluator_gathers_two_ranks_with_sums_alone(monkeypatch):
    """The DDP path without processes: two threads stand for two ranks, a barrier-summed tensor for all_reduce."""
    import threading

    a, b, c = [0.1, 0.1, 0.5, 0.6], [0.5, 0.2, 0.9, 0.9], [0.2, 0.5, 0.6, 0.95]
    targets = [_target([a, b], [1, 2]), _target([b], [1], (50, 60)), _target([c], [2])]
    dets = [_dets([a, c], [0.9, 0.6], [1, 2]), _dets([b, a], [0.7, 0.8], [1, 1]), _dets([c], [0.4], [2])]
    expected = _evaluate(dets, targets)
    local = threading.local()
    monkeypatch.setattr(task, "_rank_world", lambda: (local.rank, 2))
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def run(rank: int, shard: list[int]) -> None:
        local.rank = rank

        def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return t.copy_(total)

        ev = task.evaluator(["cat", "dog"])
        ev.update({"detections": [dets[i] for i in shard]}, [targets[i] for i in shard])
        ev.reduce(all_reduce_sum)
        results[rank] = ev.compute()

    threads = [threading.Thread(target=run, args=(0, [0, 2])), threading.Thread(target=run, args=(1, [1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert r["n"] == 3 and r["detections"] == 5
        assert r["mAP"] == pytest.approx(expected["mAP"]) and r["per_class"] == pytest.approx(expected["per_class"])
    assert 0 < expected["mAP"] < 1


# ----------------------------------------------------------------------------------------------- loss
def test_loss_is_finite_for_images_without_objects_and_for_degenerate_boxes():
    model = tiny_model()
    x = torch.randn(3, 3, 96, 96)
    anchors = model.anchors(96)
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[0.2, 0.2, 0.7, 0.8]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[0.3, 0.3, 0.3, 0.6], [float("nan"), 0, 1, 1]]), "labels": torch.tensor([1, 1])},
    ]
    for score_fn in ("sigmoid", "softmax"):
        head = SSDLiteConfig(num_classes=1, score_fn=score_fn)
        out = model(x)
        value, parts = detection_loss(*out, targets, anchors, head)
        assert torch.isfinite(value) and set(parts) == {"loc", "cls"}
        empty = [targets[0], targets[0], targets[2]]  # no usable box in the whole batch
        value, parts = detection_loss(*out, empty, anchors, head)
        assert torch.isfinite(value) and parts["loc"] == 0 and parts["cls"] > 0  # 3 hard negatives per image
        value.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    a = 50
    logits = torch.zeros(1, a, 2)
    logits[0, :, 1] = torch.linspace(-3, 3, a)  # the later anchors are the most confident false positives
    anchors = torch.stack([torch.full((a,), 0.5), torch.linspace(0.05, 0.95, a), torch.full((a,), 0.1),
                           torch.full((a,), 0.018)], 1)  # fmt: skip
    box = cxcywh_to_xyxy(anchors[:1])
    head = SSDLiteConfig(num_classes=1)
    target = [{"boxes": box, "labels": torch.tensor([1])}]
    _, parts = detection_loss(torch.zeros(1, a, 4), logits, target, anchors, head)
    per_anchor = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[0], torch.tensor([[1.0, 0.0]]).expand(a, 2), reduction="none"
    ).sum(1)
    positive = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 0], torch.tensor([0.0, 1.0])).sum() * 2
    expected = per_anchor[-3:].sum() + positive  # one match: the 3 hardest negatives, normalised by 1 match
    assert parts["cls"].item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------- data
def _write_voc(root: Path, xml_objects: dict[str, str], size=(64, 48)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i, (stem, objects) in enumerate(xml_objects.items()):
        Image.new("RGB", size, (40 * i, 100, 150)).save(root / "images" / f"{stem}.png")
        (root / "annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"</size>{objects}</annotation>"
        )
    return root


def _obj(name: str, x1, y1, x2, y2) -> str:
    return f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>" \
           "</bndbox></object>"  # fmt: skip


def test_invalid_boxes_are_dropped_and_counted_in_training_and_never_nan(tmp_path):
    """A box with no area or outside its image is invalid: training drops and counts it (evaluation refuses it,
    tests/test_reliability.py); a box one VOC pixel past the edge is clipped (issue 28, 8)."""
    root = _write_voc(tmp_path / "voc", {
        "a": _obj("dog", 10, 10, 30, 30) + _obj("dog", 20, 20, 20, 40),  # second: zero width → dropped
        "b": _obj("cat", 0, 10, 65, 40) + _obj("cat", 80, 60, 90, 70),  # first clipped (64 px); second outside
        "c": "",  # no objects: kept as a background image
        "d": _obj("cat", 5, 5, 60, 40) + _obj("cat", -5, 10, 30, 40),  # second: 5 px outside → dropped
    })  # fmt: skip
    names, splits = load_detection_dataset(root)
    assert names == ["cat", "dog"] and list(splits) == ["all"]
    with pytest.raises(AnnotationError, match=r"a.xml': object 1 \(dog\) box \[20.0, 20.0, 20.0, 40.0\]: no width"):
        load_detection_dataset(root, invalid="error")
    names, train, val, report = train_val_records(root, val_split=0.25, seed=0)
    assert len(train) == 3 and len(val) == 1
    assert (report.invalid, report.clipped, report.empty_images) == (3, 1, 1)
    message = report.message()
    assert "dropped 3 invalid box(es), e.g." in message and "clipped 1" in message
    records = {Path(r.path).stem: r for r in train + val}
    assert records["b"].boxes == [[0.0, 10.0, 64.0, 40.0]] and records["b"].labels == [1]
    assert records["c"].boxes == [] and records["a"].labels == [2] and len(records["d"].boxes) == 1
    pre = Preprocessing(input_size=64, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    model = tiny_model(num_classes=2)
    for train_mode in (True, False):
        x, targets = collate([DetectionDataset(train + val, pre, train_mode)[i] for i in range(4)])
        assert torch.isfinite(x).all()
        value, _ = task.loss(model(x), targets, tiny_config())
        assert torch.isfinite(value)


def test_malformed_xml_and_json_raise_errors_naming_the_file(tmp_path):
    root = _write_voc(tmp_path / "voc", {"a": _obj("dog", 1, 1, 9, 9), "b": _obj("dog", 1, 1, 9, 9)})
    bad = root / "annotations" / "b.xml"
    bad.write_text("<annotation><object><name>dog</name><bndbox><xmin>1</xmin>")
    with pytest.raises(AnnotationError, match=r"b\.xml.*not valid XML"):
        load_detection_dataset(root)
    bad.write_text("<annotation><object><name>dog</name><bndbox><xmin>one</xmin></bndbox></object></annotation>")
    with pytest.raises(ConfigError, match=r"b\.xml.*xmin"):
        train_val_records(root)
    js = tmp_path / "coco" / "instances_val.json"
    js.parent.mkdir()
    js.write_text('{"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}], "annotations": [')
    with pytest.raises(AnnotationError, match=r"instances_val\.json.*not valid JSON"):
        load_detection_dataset(js)
    short_bbox = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}
    image = {"id": 1, "file_name": "a.png"}  # listed, so the box is the file's only fault
    js.write_text(
        json.dumps({"images": [image], "categories": [{"id": 1, "name": "dog"}], "annotations": [short_bbox]})
    )
    with pytest.raises(AnnotationError, match=r"instances_val\.json': annotation 7: its bbox is \[1, 2, 3\], not 4"):
        load_detection_dataset(js)
    js.write_text(json.dumps({"images": []}))
    with pytest.raises(AnnotationError, match=r"instances_val\.json.*'annotations'"):
        load_detection_dataset(js)


def test_voc_split_lists_and_coco_json_read_the_same_boxes(tmp_path):
    names, train, val, report = train_val_records(RACCOON)
    assert names == ["raccoon"] and report.message() is None
    assert [Path(r.path).name for r in val] == ["raccoon-126.jpg"] and len(train) == 4
    assert sum(len(r.boxes) for r in train) == 5  # raccoon-12 has two
    # split lists may name images without their extension
    copy = shutil.copytree(RACCOON, tmp_path / "voc")
    (copy / "val.txt").write_text("raccoon-126\n")
    assert [Path(r.path).name for r in train_val_records(copy)[2]] == ["raccoon-126.jpg"]
    # the same annotations as COCO JSON, images beside the file
    coco = {"images": [], "annotations": [], "categories": [{"id": 3, "name": "raccoon"}]}
    for i, r in enumerate(train + val):
        coco["images"].append({"id": i, "file_name": Path(r.path).name, "width": r.width, "height": r.height})
        for b in r.boxes:
            ann = {"id": len(coco["annotations"]), "image_id": i, "category_id": 3, "iscrowd": 0,
                   "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}  # fmt: skip
            coco["annotations"].append(ann)
    js = tmp_path / "coco" / "annotations.json"
    shutil.copytree(RACCOON / "images", js.parent)
    js.write_text(json.dumps(coco))
    coco_names, records = load_coco(js)
    assert coco_names == names
    assert [(r.boxes, r.labels) for r in records] == [(r.boxes, r.labels) for r in train + val]


def test_workers_start_from_a_fork_server_and_draw_the_same_batches(monkeypatch):
    """DataLoader workers, made afresh each epoch, start from a fork server rather than as forks of the training
    process (whose every written page then faulted copy-on-write: 45 % of a raccoon run's CPU time in the kernel):
    the same epoch-seeded batches as forked workers, and a bad override is a clear error."""
    from mnv2.data.batches import worker_start_method

    assert worker_start_method(0) is None and worker_start_method(2) == "forkserver"
    pre = Preprocessing(input_size=64, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    epochs = {}
    for method in ("fork", "forkserver"):
        monkeypatch.setenv("MNV2_WORKER_START", method)
        data = build_detection_data(str(RACCOON), pre, 2, 4, workers=2, seed=3)
        epochs[method] = [(x, t) for x, t in data.train.epoch(1)]
    assert len(epochs["fork"]) == len(epochs["forkserver"]) == 2
    for (x, t), (y, u) in zip(epochs["fork"], epochs["forkserver"]):
        assert torch.equal(x, y) and all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(t, u))
    monkeypatch.setenv("MNV2_WORKER_START", "threads")
    with pytest.raises(ConfigError, match=r"MNV2_WORKER_START must be one of .*forkserver.*; got 'threads'"):
        worker_start_method(2)


def test_batches_are_epoch_seeded_and_sharded_by_rank():
    pre = Preprocessing(input_size=64, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)

    def first_epochs(rank=0, world=1):
        data = build_detection_data(str(RACCOON), pre, 2, 4, workers=0, seed=3, rank=rank, world=world)
        return data, [[(x, t) for x, t in data.train.epoch(e)] for e in (0, 1)]

    data, (e0, e1) = first_epochs()
    _, (again, _) = first_epochs()
    assert len(data.train) == 2 and all(x.shape == (2, 3, 64, 64) for x, _ in e0)
    for (x, t), (y, u) in zip(e0, again):
        assert torch.equal(x, y) and all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(t, u))
    assert not torch.equal(e0[0][0], e1[0][0])  # another epoch, another order and augmentation
    for _, targets in e0:
        for t in targets:
            assert t["boxes"].ndim == 2 and ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
            assert t["labels"].dtype == torch.long and (t["labels"] == 1).all()
    val = [t for _, ts in data.val.epoch(0) for t in ts]
    assert len(val) == 1 and val[0]["size"].tolist() == [197, 255]
    shards = [first_epochs(rank, 2)[0].train for rank in (0, 1)]
    assert [len(s) for s in shards] == [1, 1]


# ----------------------------------------------------------------------------------------------- task
def test_training_on_raccoon_photos_lowers_the_loss_and_finds_the_raccoons():
    """30 steps on the five fixture photos (width 0.35 @128, one fixed eval-style batch): the loss must fall, and the
    decoded detections must land on the annotated raccoons (mAP50 >= 0.9 on those photos)."""
    config = tiny_config()
    pre = task.default_preprocessing(config)
    names, train, val, _ = train_val_records(RACCOON)
    x, targets = collate([DetectionDataset(train + val, pre, False)[i] for i in range(5)])
    torch.manual_seed(0)
    model = task.build_model(config, names)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        value, parts = task.loss(model(x), targets, config)
        assert torch.isfinite(value) and set(parts) == set(get_task("detection").train_parts)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    # Batch statistics (train-mode BN): 30 steps are too few for the running averages to catch up with the weights,
    # and this checks the box decoding, not BN. Anchors, coding and post-processing must agree for this to pass.
    for mode, min_map50 in (("train", 0.9), ("eval", 0.0)):
        getattr(model, mode)()
        ev = task.evaluator(names)
        with torch.no_grad():
            ev.update(task.infer(model, x), targets)
        ev.reduce(lambda t: t)
        r = ev.compute()
        assert math.isfinite(r["loss"]) and 0 <= r["mAP"] <= r["mAP50"] <= 1 and r["n"] == 5
        assert r["mAP50"] >= min_map50, (mode, r["mAP50"])
    assert "mAP50" in task.format_metrics(r) and set(task.Evaluator.columns) <= set(r)


def test_model_api_checkpoint_head_freeze_and_init_from_a_classifier(tmp_path):
    from mnv2.engine.finetune import frozen_modules

    config = tiny_config()
    model = task.build_model(config, ["a", "b", "c"])
    assert isinstance(model.config, MobileNetV2Config) and model.config.num_classes == 0
    assert isinstance(model.head_config, dict) and model.head_config["num_classes"] == 3
    json.dumps(model.head_config)  # what the checkpoint stores
    meta = SimpleNamespace(model_config=model.config, head=model.head_config)
    rebuilt = task.from_meta(meta)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(hasattr(model.backbone, n) for n in ("stem", "blocks", "head"))
    assert frozen_modules(model, "backbone")[-1] is model.backbone.head
    classifier = MobileNetV2(MobileNetV2Config(width_mult=0.35, num_classes=10))
    model = task.build_model(config, ["a"], classifier.config)
    fresh = task.init_from(model, classifier)
    assert fresh and all(k.split(".")[0] in ("extras", "box_heads", "cls_heads") for k in fresh)
    torch.testing.assert_close(model.backbone.blocks[3][0].dw.conv.weight, classifier.blocks[3][0].dw.conv.weight)
    torch.testing.assert_close(model.backbone.head.bn.running_var, classifier.head.bn.running_var)
    # a detector's weights: all but the class predictors when the classes differ
    other = task.build_model(config, ["a", "b"])
    fresh = task.init_from(other, model)
    assert sorted(fresh) == sorted(f"cls_heads.{i}.1.{p}" for i in range(6) for p in ("weight", "bias"))
    with pytest.raises(ConfigError, match="published strides"):
        SSDLite(MobileNetV2Config(output_stride=16))


def test_predict_returns_coco_style_detections_and_draws_them(tmp_path):
    model = tiny_model().eval()
    pre = Preprocessing(input_size=128, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    from mnv2.deploy.runtime.engines import TorchEngine
    from mnv2.deploy.runtime.predict import Predictor

    module, kind = task.export_module(model, (128, 128))  # what the torch engine runs for a checkpoint
    info = {"preprocessing": pre, "class_names": ["raccoon"], "head": model.head_config, "output": kind}
    images = sorted((RACCOON / "images").iterdir())[:2]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    p = Predictor(task.INFERENCE, info, TorchEngine(module, "<module>", None))
    inputs = [*map(str, images), str(tmp_path / "broken.jpg")]
    results = list(p.predict_files(inputs, min_score=0.0, output_dir=tmp_path / "out"))
    assert "error" in results[2] and "skipped" in task.INFERENCE.format_line(results[2])
    for r, path in zip(results, images):
        w, h = Image.open(path).size
        assert (r["width"], r["height"]) == (w, h) and len(r["detections"]) == 100  # TF's max_total_detections
        for d in r["detections"]:
            x, y, bw, bh = d["bbox"]
            assert 0 <= x <= x + bw <= w + 0.01 and 0 <= y <= y + bh <= h + 0.01
            assert d["category_id"] == 1 and d["label"] == "raccoon" and 0 <= d["score"] <= 1
        assert Image.open(r["image"]).size == (w, h)
        assert task.INFERENCE.format_line(r).startswith(str(path))
    report = task.plot_report(_evaluate([_dets([[0, 0, 1, 1]], [1.0], [1])], [_target([[0, 0, 1, 1]], [1])]),
                              ["cat", "dog"], tmp_path / "pr.png")  # fmt: skip
    assert Image.open(report).size[0] > 100


def test_table6_model_size_at_320_with_91_classes():
    """SSDLite-MobileNetV2 1.0 @320, COCO's 90 classes + background (TF num_classes 90 = 91 scores): Table 6 gives
    4.3M parameters and 0.8B multiply-adds."""
    model = SSDLite(MobileNetV2Config(width_mult=1.0), SSDLiteConfig(num_classes=90)).eval()
    params = sum(p.numel() for p in model.parameters())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    madds = 0

    def count(module, _inputs, out):
        nonlocal madds
        madds += out[0].numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 320, 320))
    for h in handles:
        h.remove()
    print(f"SSDLite-MobileNetV2 1.0 @320, 91 scores: {params:,} params ({params - bn:,} without BN), {madds:,} MAdds")
    assert params == 4_500_543 and params - bn == 4_449_791
    assert madds == 804_397_504
    assert 0.75e9 < madds < 0.85e9  # Table 6: 0.8B


@pytest.mark.isolated  # converts with litert-torch in-process; see the marker's note in pyproject.toml
def test_export_onnx_and_tflite_decode_boxes_in_the_graph_and_predict_as_torch(tmp_path, monkeypatch, capsys):
    """`mnv2 export` of a detector: boxes decoded in the graph ([1, A, 4 + C], parity-checked), NMS on the host;
    `mnv2 predict` on the exported files (ONNX Runtime, LiteRT) gives the checkpoint's detections."""
    from mnv2.cli import main
    from mnv2.deploy.runtime.engines import clear_cache, load_engine
    from mnv2.weights.checkpoint import CheckpointMeta, save_checkpoint

    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    clear_cache()
    torch.manual_seed(0)
    model = SSDLite(MobileNetV2Config(width_mult=0.35, padding="tf"), SSDLiteConfig(num_classes=2)).eval()
    with torch.no_grad():  # spread the untrained scores (all near 0.5 otherwise), so that their order is stable
        for head in model.cls_heads:
            head[-1].weight.mul_(40)
    pre = Preprocessing(input_size=128, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    meta = CheckpointMeta(model.config, pre, ["raccoon", "dog"], task="detection", head=model.head_config)
    ckpt = save_checkpoint(tmp_path / "det.safetensors", model, meta)
    images = [str(p) for p in sorted((RACCOON / "images").iterdir())[:2]]
    assert main(["predict", "--out", str(tmp_path / "drawn"), str(ckpt), *images, "--min-score", "0", "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    anchors = num_anchors(128, 128, model.ssd_config)
    for fmt, extra in (("onnx", []), ("tflite", ["--static-batch"])):
        out = tmp_path / f"det.{fmt}"
        assert main(["export", str(ckpt), "--format", fmt, "--out", str(out), *extra, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["output"] == "boxes_scores" and report["parity_max_abs"] < 1e-4
        engine = load_engine(out)
        assert engine(torch.zeros(1, 3, 128, 128).numpy()).shape == (1, anchors, 4 + 2)
        assert main(["predict", "--out", str(tmp_path / "drawn"), str(out), *images, "--min-score", "0", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        for g, w in zip(got, want):
            assert len(g["detections"]) == len(w["detections"]) == 100
            scores = [d["score"] for d in g["detections"]]
            assert scores == pytest.approx([d["score"] for d in w["detections"]], abs=1e-4)
            for d in g["detections"][:20]:  # near-equal scores may swap places: match each box to one of torch's
                assert any(
                    d["label"] == e["label"]
                    and d["bbox"] == pytest.approx(e["bbox"], abs=0.05)
                    and abs(d["score"] - e["score"]) < 1e-4
                    for e in w["detections"]
                )
    # a checkpoint run by an export engine (converted on the fly, cached) answers as its exported file
    assert (
        main(
            [
                "predict",
                "--out",
                str(tmp_path / "drawn"),
                str(ckpt),
                *images,
                "--min-score",
                "0",
                "--engine",
                "onnxruntime",
                "--json",
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert [len(g["detections"]) for g in got] == [len(w["detections"]) for w in want]
    assert got[0]["detections"][0]["score"] == pytest.approx(want[0]["detections"][0]["score"], abs=1e-4)
    assert (
        main(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "x.onnx"), "--bake-preprocessing"]) == 2
    )
    assert "bake_preprocessing (uint8 input, probabilities out) is for classifiers" in capsys.readouterr().err
    # exported at another size, the file's card says so and the file runs (issue 28, 4: it kept 128 and exited 70)
    other = tmp_path / "det96.onnx"
    assert main(["export", str(ckpt), "--out", str(other), "--input-size", "96"]) == 0
    capsys.readouterr()
    from mnv2.deploy.runtime.card import read_card

    assert read_card(other)[1]["preprocessing"].input_size == 96
    assert main(["predict", str(other), *images, "--min-score", "0", "--json", "--out", str(tmp_path / "d96")]) == 0
    assert [len(r["detections"]) for r in json.loads(capsys.readouterr().out)] == [100, 100]


def test_quantize_a_detector_reports_the_map_drop_and_the_int8_file_predicts(tmp_path, capsys):
    """`mnv2 quantize` of a detector: INT8 QDQ ONNX calibrated on the train split, the method chosen by the task's
    own metric (mAP50), COCO metrics of fp32 and INT8 on the val split in the report; the file runs in `mnv2 predict`
    (host NMS) like the fp32 export."""
    from mnv2.cli import main
    from mnv2.deploy.quantize import quantize
    from mnv2.weights.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = SSDLite(MobileNetV2Config(width_mult=0.35, padding="tf"), SSDLiteConfig(num_classes=1)).eval()
    pre = Preprocessing(input_size=128, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    meta = CheckpointMeta(model.config, pre, ["raccoon"], task="detection", head=model.head_config)
    ckpt = save_checkpoint(tmp_path / "det.safetensors", model, meta)
    out = tmp_path / "det-int8.onnx"
    report = quantize(load_checkpoint(ckpt), out, str(RACCOON), num_selection=1, method="auto", workers=0)
    n_train, n_val = (len((RACCOON / f"{s}.txt").read_text().split()) for s in ("train", "val"))
    assert (report.n_calibration, report.n_selection, report.n_eval) == (n_train - 1, 1, n_val)
    assert {c.method for c in report.candidates} == {"percentile", "entropy", "distribution", "minmax"}
    assert report.method in {c.method for c in report.candidates}
    for m in (report.fp32, report.int8):
        assert set(m) == {"mAP", "mAP50", "mAP75"} and all(0 <= v <= 1 for v in m.values())
    assert report.drops["mAP50"] == pytest.approx(100 * (report.fp32["mAP50"] - report.int8["mAP50"]), abs=0.01)
    assert report.metric == "mAP50" and report.input_hw == [128, 128]  # the detection evaluator's `best`
    assert report.drop == report.drops["mAP50"] and report.int8_mAP50 == report.int8["mAP50"]
    # the box decoding stayed fp32: no quantize/dequantize pair on the graph's output
    import onnx

    graph = onnx.load(str(out)).graph
    producer = {o: n for n in graph.node for o in n.output}
    assert producer[graph.output[0].name].op_type != "DequantizeLinear"
    assert (
        main(
            [
                "predict",
                "--out",
                str(tmp_path / "drawn"),
                str(out),
                str(sorted((RACCOON / "images").iterdir())[0]),
                "--json",
            ]
        )
        == 0
    )
    assert "detections" in json.loads(capsys.readouterr().out)[0]
    assert main(["quantize", str(ckpt), "--calibration", str(RACCOON), "--out", str(tmp_path / "x.tflite")]) == 2
    assert "name the output .onnx" in capsys.readouterr().err


def test_precise_bn_gives_the_eval_detector_the_statistics_it_trains_with():
    """A fresh SSDLite's extra depthwise convs (TF's 0.03-std init) output variance ~1e-3; their BN running variance
    starts at 1 and, at momentum 0.03, still reads ~0.4 after 30 steps: the eval-mode model then scales those
    layers' outputs down ~400x (measured on the raccoon run: one box for every image). ``recompute_bn_stats``
    averages the statistics of real train batches under the current weights."""
    from mnv2.data.detection import build_detection_data
    from mnv2.engine.loop import recompute_bn_stats

    torch.manual_seed(0)
    model = SSDLite(MobileNetV2Config(width_mult=0.35, bn_momentum=0.03), SSDLiteConfig(num_classes=1))
    pre = Preprocessing(input_size=128, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    bn = model.extras[0][1].bn  # the first extra layer's depthwise conv
    seen = {}

    def first_batch_variance(module, inputs, output) -> None:
        seen.setdefault("var", inputs[0].var((0, 2, 3)))

    bn.register_forward_hook(first_batch_variance)
    data = build_detection_data(str(RACCOON), pre, 4, 4, workers=0)
    model.train()
    with torch.no_grad():
        for x, _ in data.train.epoch(0):
            model(x)
    assert (bn.running_var / seen["var"]).median() > 20  # after one step the running variance is still ~init
    recompute_bn_stats(model, data.train, 0, 8, torch.device("cpu"), None)
    assert bn.momentum == 0.03 and model.training
    ratio = (bn.running_var / seen["var"]).median()
    assert 0.2 < ratio < 5  # the statistics of the data, under these weights


# ----------------------------------------------------------------------------------------------- data report
def _voc_boxes(root: Path, side: int, n: int = 4) -> Path:
    """A VOC-like set of 320x320 images, each with two square boxes of ``side`` pixels."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        Image.new("RGB", (320, 320), (i * 40, 90, 200)).save(root / "images" / f"im{i}.jpg")
        objects = "".join(
            f"<object><name>cell</name><difficult>0</difficult><bndbox><xmin>{x}</xmin><ymin>{x}</ymin>"
            f"<xmax>{x + side}</xmax><ymax>{x + side}</ymax></bndbox></object>"
            for x in (40, 180)
        )
        (root / "annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.jpg</filename><size><width>320</width><height>320</height>"
            f"<depth>3</depth></size>{objects}</annotation>"
        )
    (root / "train.txt").write_text("\n".join(f"im{i}.jpg" for i in range(n - 1)))
    (root / "val.txt").write_text(f"im{n - 1}.jpg")
    return root


@pytest.mark.parametrize("side, covered", [(12, 0.0), (96, 100.0)])
def test_the_data_report_counts_boxes_and_the_anchors_that_can_learn_them(tmp_path, side, covered):
    """Boxes of a known size against SSDLite's anchors at 320 px: 12 px boxes have no anchor at IoU 0.5 (the
    smallest is 32 px) and the report says what to do; 96 px boxes are all covered (issue 24, 1)."""
    from mnv2.engine.config import apply_overrides, load_recipe

    data = _voc_boxes(tmp_path / "voc", side)
    config = apply_overrides(load_recipe("detection"), {"data": str(data), "width": 0.35, "workers": 0})
    bundle = task.TASK.build_data(config, task.default_preprocessing(config))
    text = task.data_report(bundle, task.TASK.build_model(config, bundle.class_names), config)
    assert "train: 3 images, 6 boxes (cell 6)" in text and "val: 1 images, 2 boxes (cell 2)" in text
    assert f"median {side} px" in text and "smallest anchor 32 px" in text
    assert f"{covered:.1f} % of the train boxes have an anchor at IoU >= 0.5" in text
    assert ("larger --resolution" in text) == (covered < 90)


def test_eval_of_a_split_without_boxes_reports_undefined_metrics_as_null_and_n_a(tmp_path, capsys):
    """No ground-truth box in the split: AP is undefined, not 0.0 (issue 28, 10)."""
    from mnv2.cli import main
    from mnv2.weights.checkpoint import CheckpointMeta, save_checkpoint

    data = _voc_boxes(tmp_path / "voc", 40)
    xml = data / "annotations" / "im3.xml"  # the val image stays, its objects go (train keeps the class)
    text = xml.read_text()
    xml.write_text(text[: text.index("<object>")] + "</annotation>")
    model = tiny_model().eval()
    pre = Preprocessing(input_size=128, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    meta = CheckpointMeta(model.config, pre, ["cell"], task="detection", head=model.head_config)
    ckpt = save_checkpoint(tmp_path / "det.safetensors", model, meta)
    args = ["eval", str(ckpt), "--data", str(data), "--split", "val", "--confusion", str(tmp_path)]
    assert main([*args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mAP"] is None and r["mAP50"] is None and r["mAP75"] is None
    assert main(args) == 0
    assert "mAP n/a mAP50 n/a mAP75 n/a" in capsys.readouterr().out


def _square_boxes(side: float, n: int = 200) -> torch.Tensor:
    """``n`` square boxes of ``side`` (a fraction of the image) at random places, as normalised corners."""
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(n, 2, generator=g) * (1 - side) + side / 2
    return torch.cat([centres - side / 2, centres + side / 2], 1)


def test_the_anchor_fit_covers_boxes_of_a_known_size_and_leaves_covered_ones_alone():
    """Boxes of 38 px at 320 px (0.12 of the side): TF's anchors (the smallest 32 px, then 64 px at stride 16)
    match under 90 % of them at IoU 0.5; the fit lowers the scales until at least 98 % are matched, as YOLO's
    autoanchor does. Boxes of 96 px are all matched already, and the head is left as it is (issue 24, 2)."""
    from mnv2.models.ssdlite import ANCHOR_FIT_BELOW, anchor_coverage, fit_anchor_scales

    head = SSDLiteConfig(num_classes=1)
    small = _square_boxes(0.12)
    fitted, before, after = fit_anchor_scales(small, 320, head)
    assert before < ANCHOR_FIT_BELOW and after >= 0.98
    assert fitted.min_scale < head.min_scale and fitted.lowest_scale == fitted.min_scale / 2
    assert anchor_coverage(small, 320, fitted) == after  # the coverage the fit reports is the fitted head's
    large = _square_boxes(0.3)
    assert fit_anchor_scales(large, 320, head) == (head, 1.0, 1.0)


def test_training_fits_the_anchors_writes_them_into_the_config_and_the_model_uses_them(tmp_path):
    """The detection task's adapt step on a set of 38-px boxes: anchor_scales in the config (config.yaml), the
    built model's anchors from them, and ``--anchor-fit none`` keeping TF's."""
    from mnv2.engine.config import apply_overrides, load_recipe

    data = _voc_boxes(tmp_path / "voc", 38)
    for i, xml in enumerate(sorted((data / "annotations").glob("*.xml"))):  # 38-px boxes at 20 places an image
        corners = (_square_boxes(0.12, 20 + i) * 320).round().int().tolist()[i:]
        objects = "".join(
            f"<object><name>cell</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}"
            f"</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for x0, y0, x1, y1 in corners
        )
        text = xml.read_text()
        xml.write_text(text[: text.index("<object>")] + objects + "</annotation>")
    config = apply_overrides(load_recipe("detection"), {"data": str(data), "width": 0.35, "workers": 0})
    bundle = task.TASK.build_data(config, task.default_preprocessing(config))
    adapted, notes = task.adapt(config, bundle)
    assert adapted.options["anchor_scales"] is not None and adapted.options["anchor_scales"][1] < 0.2
    assert len(notes) == 1 and "anchor scales fitted to the boxes" in notes[0] and "--anchor-fit none" in notes[0]
    model = task.TASK.build_model(adapted, bundle.class_names)
    assert model.ssd_config.min_scale == adapted.options["anchor_scales"][1]
    assert task.adapt(adapted, bundle) == (adapted, [])  # a config that has scales keeps them
    off = apply_overrides(config, {"anchor_fit": "none"})
    assert task.adapt(off, bundle) == (off, [])


# ----------------------------------------------------------------------------------------------- tiles in training
def _big_voc(root: Path, n: int = 3, size: int = 960, side: int = 30) -> Path:
    """``n`` ``size``-px images, each with nine ``side``-px boxes on a grid (small objects in large images)."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    places = [(x, y) for x in (100, 450, 800) for y in (120, 470, 820)]
    for i in range(n):
        Image.new("RGB", (size, size), (30 * i, 90, 200)).save(root / "images" / f"im{i}.jpg")
        objects = "".join(
            f"<object><name>speck</name><difficult>0</difficult><bndbox><xmin>{x}</xmin><ymin>{y}</ymin>"
            f"<xmax>{x + side}</xmax><ymax>{y + side}</ymax></bndbox></object>"
            for x, y in places
        )
        (root / "annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.jpg</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{objects}</annotation>"
        )
    (root / "train.txt").write_text("\n".join(f"im{i}.jpg" for i in range(n - 1)))
    (root / "val.txt").write_text(f"im{n - 1}.jpg")
    return root


def test_training_on_tiles_sees_small_objects_at_the_tiles_scale_and_validates_on_every_tile(tmp_path):
    """``--tile 320`` on 960-px images with 30-px boxes (issue 24, 4): a train sample is one 320-px tile resized to
    the input, so a box spans about 30/320 of it (not 30/960 as from the whole image); validation cuts each image
    into ``predict --tile``'s grid (16 tiles at overlap 0.2), and every box lies whole in at least one tile."""
    from mnv2.data.detection import crop_to_window
    from mnv2.engine.config import apply_overrides, load_recipe
    from mnv2.ops import tile_windows

    data = _big_voc(tmp_path / "voc")
    config = apply_overrides(load_recipe("detection"), {"data": str(data), "width": 0.35, "workers": 0, "tile": 320,
                                                        "resolution": 128})  # fmt: skip
    bundle = task.TASK.build_data(config, task.default_preprocessing(config))
    train, val = bundle.train.dataset, bundle.val.dataset
    no_aug = DetectionDataset(train.records, train.pre, True, DetectionAugment(expand_prob=0, crop_skip=1, hflip=0,
                                                                               photometric=0), tile=320)  # fmt: skip
    torch.manual_seed(0)
    sides = []
    for i in range(8):
        x, t = no_aug[i % len(no_aug)]
        assert x.shape == (3, 128, 128) and ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
        sides += (t["boxes"][:, 2] - t["boxes"][:, 0]).tolist()
    assert sides and all(abs(s - 30 / 320) < 0.02 or s < 30 / 320 for s in sides)  # whole or cut by the border
    assert max(sides) > 2.5 * 30 / 960
    assert len(val) == 16 and len(tile_windows(960, 960, 320, 0.2)) == 16
    whole = 0
    for i in range(len(val)):
        _, t = val[i]
        assert t["size"].tolist() == [320, 320]
        whole += int(((t["boxes"][:, 2] - t["boxes"][:, 0]) * 320 > 29.5).sum())
    assert whole >= 9  # each of the image's nine boxes whole in some tile
    # a box with under half its area in the window is dropped, one with more is clipped to it
    image, boxes = torch.zeros(3, 100, 100, dtype=torch.uint8), torch.tensor([[40.0, 40, 60, 60], [70, 0, 90, 20]])
    crop, kept, labels = crop_to_window(image, boxes, torch.tensor([1, 2]), (0, 0, 75, 50))
    assert crop.shape == (3, 50, 75) and labels.tolist() == [1] and kept.tolist() == [[40.0, 40, 60, 50]]
    with pytest.raises(ConfigError, match="--tile is an option of detection, not of segmentation"):
        apply_overrides(load_recipe("segmentation"), {"tile": 320})


def test_the_tiles_boxes_lie_in_a_tile_wherever_they_are_in_the_image():
    """The data report and the anchor fit measure boxes against a tile (``--tile``): a box far from the origin of a
    1280x960 image lies in the 640-px tile that holds its centre, and one across a tile border is cut by it. They
    were divided by the tile's side in place, which put three quarters of a mosaic's boxes off the frame, unmatched
    by any anchor (issue 24: 25 % matched, where 72 % are)."""
    record = DetectionRecord("big.jpg", 1280, 960, boxes=[[1000.0, 700, 1050, 750], [620, 10, 660, 50]], labels=[1, 1])
    tiled = task.train_boxes([record], 640) * 640
    assert torch.allclose(tiled, torch.tensor([[360.0, 60, 410, 110], [0, 10, 20, 50]]))
    whole = task.train_boxes([record]) * torch.tensor([1280.0, 960, 1280, 960])
    assert torch.allclose(whole, torch.tensor(record.boxes))
    small = DetectionRecord("small.jpg", 300, 200, boxes=[[10.0, 20, 110, 120]], labels=[1])  # smaller than a tile
    assert torch.allclose(task.train_boxes([small], 640), torch.tensor([[10 / 300, 20 / 200, 110 / 300, 120 / 200]]))


def test_a_failed_anchor_fit_says_so_and_keeps_tfs_anchors(tmp_path, monkeypatch):
    """When no scales on SSDLite's layout match more boxes than TF's (the BCCD mosaics at 320 px: 68.7 % matched,
    boxes of 23-29 px on a stride-16 grid, issue 24), the config keeps TF's anchors and the run says the fit failed
    and what to do: it trained without a word before. The fit is replaced by one that finds nothing, as it found
    nothing on the mosaics."""
    from mnv2.engine.config import apply_overrides, load_recipe

    config = apply_overrides(load_recipe("detection"), {"data": str(_big_voc(tmp_path / "voc")), "width": 0.35,
                                                        "workers": 0})  # fmt: skip
    bundle = task.TASK.build_data(config, task.default_preprocessing(config))
    monkeypatch.setattr(task, "fit_anchor_scales", lambda boxes, size, head: (head, 0.687, 0.687))
    adapted, notes = task.adapt(config, bundle)
    assert adapted == config and len(notes) == 1
    assert notes[0].startswith("anchor fit: no anchor scales on SSDLite's layout match more than TF's 68.7 % ")
    assert "--tile" in notes[0] and "--resolution" in notes[0]
