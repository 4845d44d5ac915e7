"""Tiled inference (issue 27, 2): `--tile SIZE --overlap F` cuts a large image into overlapping tiles at the model's
size; detection merges the boxes (each object once, in image pixels), segmentation blends the logits."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnv2.cli import main
from mnv2.data.detection import parse_voc_xml
from mnv2.deploy.runtime.predict import Predictor
from mnv2.tasks.infer import tiles

ROOT = Path(__file__).parents[1]
RACCOONS = Path(__file__).parent / "fixtures" / "detection" / "raccoon"
CAMVID = Path(__file__).parent / "fixtures" / "segmentation" / "camvid"
DETECTOR = ROOT / "examples" / "models" / "raccoon_ssdlite_mnv2.safetensors"
SEGMENTER = ROOT / "examples" / "models" / "camvid_deeplabv3_mnv2.safetensors"


@pytest.mark.parametrize("width, height, size, overlap", [(1600, 1200, 320, 0.2), (700, 300, 256, 0.5), (100, 90, 320,
                                                          0.2), (641, 320, 320, 0.0)])  # fmt: skip
def test_tiles_cover_the_image_and_overlap_as_asked(width, height, size, overlap):
    wins = tiles.windows(width, height, size, overlap)
    covered = np.zeros((height, width), np.int32)
    for x0, y0, x1, y1 in wins:
        assert x1 - x0 == min(size, width) and y1 - y0 == min(size, height)  # every tile has the model's size
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs = sorted({w[0] for w in wins})
    assert all(a + size - b >= overlap * size - 1 for a, b in itertools.pairwise(xs))  # neighbours overlap


def test_tiled_detection_finds_each_small_raccoon_once_in_the_right_place(tmp_path, capsys):
    """Four raccoon photos pasted small into a 1600x1200 canvas: whole-image inference squeezes them to ~48 px;
    tiles at the detector's 320 px find each one once, where its annotation (moved into the canvas) says."""
    canvas = Image.new("RGB", (1600, 1200), (120, 130, 110))
    truth = []
    for stem, (x, y) in zip(["raccoon-109", "raccoon-126", "raccoon-18", "raccoon-39"],  # one raccoon each
                            [(60, 80), (900, 150), (250, 760), (1250, 820)]):  # fmt: skip
        photo = Image.open(RACCOONS / "images" / f"{stem}.jpg").convert("RGB")
        scale = 240 / max(photo.size)
        canvas.paste(photo.resize((round(photo.width * scale), round(photo.height * scale))), (x, y))
        _, objects = parse_voc_xml(RACCOONS / "annotations" / f"{stem}.xml")
        truth += [[x + b[0] * scale, y + b[1] * scale, x + b[2] * scale, y + b[3] * scale] for _, b in objects]
    path = tmp_path / "canvas.jpg"
    canvas.save(path, quality=95)
    argv = ["predict", str(DETECTOR), str(path), "--json", "--threads", "1", "--min-score", "0.5"]
    assert main([*argv, "--tile", "320", "--overlap", "0.2"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (d["bbox"] for d in found["detections"])]

    def iou(a, b):
        inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    assert len(boxes) == len(truth) == 4, found
    for t in truth:  # each raccoon exactly once, in place
        assert sum(iou(t, b) >= 0.5 for b in boxes) == 1, (t, boxes)
    assert (found["width"], found["height"]) == (1600, 1200)
    assert main(argv) == 0  # the same photo as one 320-px image: boxes found are fewer or misplaced
    whole = json.loads(capsys.readouterr().out)[0]["detections"]
    placed = sum(any(iou(t, [b[0], b[1], b[0] + b[2], b[1] + b[3]]) >= 0.5 for b in (d["bbox"] for d in whole))
                 for t in truth)  # fmt: skip
    assert placed < 4
    job = tmp_path / "r.jsonl"  # a job's tiled lines are predict's
    assert main(["predict", str(DETECTOR), str(path), "--out", str(job), "--tile", "320", "--threads", "1",
                 "--min-score", "0.5"]) == 0  # fmt: skip
    assert json.loads(job.read_text())["detections"] == found["detections"]


def test_tiled_segmentation_equals_untiled_where_one_tile_covers_the_image_and_blends_otherwise():
    p = Predictor.open(SEGMENTER, threads=1)
    photo = Image.open(CAMVID / "val" / "0016E5_07959.png").convert("RGB")  # 120x90
    whole = p.predict_images([photo])[0]
    one = p.predict_tiled(photo, 128, 0.2)
    assert np.array_equal(one["mask"], whole["mask"]) and one["fractions"] == whole["fractions"]
    big = photo.resize((480, 360), Image.BILINEAR)
    whole = p.predict_images([big])[0]["mask"]
    tiled = p.predict_tiled(big, 256, 0.25)["mask"]  # 4 tiles, blended in the overlaps
    assert tiled.shape == whole.shape == (360, 480) and (tiled == whole).mean() > 0.9


@pytest.mark.parametrize("argv, needle", [
    (["--tile", "16"], "--tile must be a whole number of pixels >= 32"),
    (["--tile", "320", "--overlap", "0.95"], "--overlap must be a fraction of the tile in [0, 0.9]"),
])  # fmt: skip
def test_bad_tiles_are_one_line(argv, needle, capsys):
    assert main(["predict", str(DETECTOR), str(RACCOONS / "images" / "raccoon-12.jpg"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnv2: error:") and needle in err[0]


def test_a_classifier_has_no_tiles(capsys):
    model = ROOT / "examples" / "models" / "fashion_mnist_mnv2.safetensors"
    assert main(["predict", str(model), str(RACCOONS / "images" / "raccoon-12.jpg"), "--tile", "64"]) == 2
    assert "--tile is for detection and segmentation models" in capsys.readouterr().err


@pytest.mark.parametrize("model, data, metric", [(DETECTOR, RACCOONS, "mAP50"), (SEGMENTER, CAMVID, "mIoU")])
def test_eval_with_one_tile_per_image_scores_as_the_untiled_eval(model, data, metric, tmp_path, capsys):
    """`mnv2 eval --tile` evaluates predict's tiled answers with the task's own evaluator: tiles as large as the
    images give the untiled metric; smaller tiles a metric of their own, with the tiles said in the JSON."""
    argv = ["eval", str(model), "--data", str(data), "--json", "--confusion", str(tmp_path), "--workers", "0"]
    assert main(argv) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main([*argv, "--tile", "512"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one[metric] == pytest.approx(whole[metric], abs=2e-3) and (one["tile"], one["overlap"]) == (512, 0.2)
    assert main([*argv, "--tile", "64", "--overlap", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)[metric] is not None


def test_a_model_trained_on_tiles_is_evaluated_and_run_on_its_tiles(tmp_path, capsys):
    """A detector trained with ``--tile 320`` records it (its run config, then every export's card): `mnv2 eval` and
    `mnv2 predict` cut 320-px tiles unless told otherwise, and say so; ``--tile 0`` runs whole images. A large photo
    seen whole by a tile-trained model is at a scale it never learnt (issue 24)."""
    import dataclasses

    from mnv2.weights.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint

    meta = read_checkpoint_meta(DETECTOR)
    config = {**(meta.config or {}), "options": {**(meta.config or {}).get("options", {}), "tile": 320}}
    tiled = save_checkpoint(tmp_path / "tiled.safetensors", load_checkpoint(DETECTOR),
                            dataclasses.replace(meta, config=config))  # fmt: skip
    argv = ["eval", str(tiled), "--data", str(RACCOONS), "--json", "--confusion", str(tmp_path), "--workers", "0"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["tile"] == 320 and "tiles of 320 px, as the model was trained (--tile 0" in err
    assert main([*argv, "--tile", "0"]) == 0
    out, err = capsys.readouterr()
    assert "tile" not in json.loads(out) and "as the model was trained" not in err
    photo = str(RACCOONS / "images" / "raccoon-12.jpg")
    run = ["predict", str(tiled), photo, "--json", "--threads", "1"]
    assert main(run) == 0
    by_tiles, err = capsys.readouterr()
    assert "tiles of 320 px" in err
    assert main(["predict", str(DETECTOR), photo, "--json", "--threads", "1", "--tile", "320"]) == 0
    assert json.loads(by_tiles) == json.loads(capsys.readouterr().out)  # the untouched model told --tile 320
    exported = tmp_path / "tiled.onnx"
    assert main(["export", str(tiled), "--format", "onnx", "--out", str(exported)]) == 0
    capsys.readouterr()
    assert Predictor.open(exported).info["tile"] == 320
