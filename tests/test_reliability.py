"""Issue 18: one error surface and no silent wrong result.

A catalogue of bad inputs across the verbs: each runs ``mnv2.cli.main(argv)`` in-process and must end with exit
status 2, exactly one stderr line starting ``mnv2: error:``, no traceback and nothing left at the output location.
The formerly silent cases also check the correct behaviour.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import make_image_folder
from mnv2.cli import EXIT_BUG, main
from mnv2.data.preprocessing import Preprocessing
from mnv2.models import mobilenet_v2
from mnv2.weights.checkpoint import METADATA_KEY, CheckpointMeta, NonFiniteError, save_checkpoint

CLASSES = ["blue", "green", "red"]  # make_image_folder's classes, sorted as the folder scan sorts them


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # progress bars would be extra stderr lines
    monkeypatch.delenv("MNV2_DEBUG", raising=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny data and checkpoints shared by the catalogue: ``{name: path}``."""
    root = tmp_path_factory.mktemp("reliability")
    p = {"root": root}
    p["split"] = make_image_folder(root / "split", classes=("red", "green", "blue"), n=4, size=36)  # root/<class>
    p["tv"] = root / "tv"
    make_image_folder(p["tv"] / "train", n=4, size=36, seed=1)
    make_image_folder(p["tv"] / "val", n=2, size=36, seed=2)
    p["one"] = make_image_folder(root / "one", classes=("red",), n=4, size=36)
    torch.manual_seed(0)
    model = mobilenet_v2(width_mult=0.35, num_classes=3, stem_stride=1)
    meta = CheckpointMeta(model.config, Preprocessing(input_size=32, crop_pct=1.0), list(CLASSES))
    p["ckpt"] = save_checkpoint(root / "good.safetensors", model, meta)
    state = load_file(str(p["ckpt"]))
    good_meta = json.loads(meta.to_json())

    def variant(name, tensors=None, meta_text=None):
        path = root / f"{name}.safetensors"
        save_file(tensors or state, str(path), metadata={METADATA_KEY: meta_text or json.dumps(good_meta)})
        p[name] = path

    variant("not_json", meta_text="{not json")
    variant("no_model_config", meta_text=json.dumps({k: v for k, v in good_meta.items() if k != "model_config"}))
    variant("short_names", meta_text=json.dumps({**good_meta, "class_names": ["a", "b"]}))
    variant("int8", tensors={k: v.to(torch.int8) if v.is_floating_point() else v for k, v in state.items()})
    variant("nan", tensors={k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state.items()})
    variant("inf", tensors={**state, "classifier.weight": torch.full_like(state["classifier.weight"], math.inf)})
    p["pickle"] = root / "pickle.safetensors"
    p["pickle"].write_bytes(pickle.dumps({"a": 1}))
    p["text"] = root / "text.safetensors"
    p["text"].write_text("hello")
    p["onnx"] = root / "trunc.onnx"
    p["onnx"].write_bytes(b"\x08\x07\x12\x03abc\x1a")  # a truncated protobuf
    p["file"] = root / "a_file"
    p["file"].write_text("x")
    p["dir"] = root / "a_dir"
    p["dir"].mkdir()
    p["img"] = root / "split" / "red" / "0.png"
    # datasets whose text files are hostile (issue 28, 11)
    fixtures = Path(__file__).parent / "fixtures"
    shutil.copytree(fixtures / "detection" / "raccoon", root / "voc_bad_list")
    (root / "voc_bad_list" / "val.txt").write_bytes(b"\xff\xfe\xfa raccoon-18.jpg\n")
    p["voc_bad_list"] = root / "voc_bad_list"
    shutil.copytree(fixtures / "segmentation" / "camvid", root / "cam_nested")
    (root / "cam_nested" / "classes.json").write_text('{"names": ' + "[" * 100_000 + "]" * 100_000 + "}")
    p["cam_nested"] = root / "cam_nested"
    p["voc"] = fixtures / "detection" / "raccoon"
    p["raccoon_model"] = Path(__file__).parents[1] / "examples" / "models" / "raccoon_ssdlite_mnv2.safetensors"
    # ground truth that evaluation must refuse to change in silence (issue 28, 8): raccoon-18 (240x156), a train image
    box = "<xmin>32</xmin><ymin>25</ymin><xmax>201</xmax><ymax>130</ymax>"
    for name, replacement in {
        "gt_reversed": "<xmin>201</xmin><ymin>25</ymin><xmax>32</xmax><ymax>130</ymax>",
        "gt_huge": "<xmin>32</xmin><ymin>25</ymin><xmax>1e308</xmax><ymax>130</ymax>",
        "gt_negative": "<xmin>-80</xmin><ymin>25</ymin><xmax>201</xmax><ymax>130</ymax>",
    }.items():
        shutil.copytree(p["voc"], root / name)
        xml = root / name / "annotations" / "raccoon-18.xml"
        xml.write_text(xml.read_text().replace(box.replace("><", ">\n\t\t\t<"), replacement))
        assert replacement in xml.read_text()
        p[name] = root / name
    shutil.copytree(p["voc"], root / "gt_abs_path")
    xml = root / "gt_abs_path" / "annotations" / "raccoon-18.xml"
    other = (root / "gt_abs_path" / "images" / "raccoon-12.jpg").resolve()
    xml.write_text(xml.read_text().replace("<filename>raccoon-18.jpg", f"<filename>{other}"))
    p["gt_abs_path"] = root / "gt_abs_path"

    def coco(name, edit):
        d = root / name
        shutil.copytree(p["voc"] / "images", d / "images")
        c = {"images": [{"id": 1, "file_name": "raccoon-18.jpg", "width": 240, "height": 156},
                        {"id": 2, "file_name": "raccoon-12.jpg", "width": 259, "height": 194}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [32, 25, 169, 105], "iscrowd": 0}],
             "categories": [{"id": 1, "name": "raccoon"}]}  # fmt: skip
        edit(c)
        (d / "val.json").write_text(json.dumps(c))
        p[name] = d / "val.json"

    coco("coco_dup_ids", lambda c: c["images"].append({"id": 1, "file_name": "raccoon-39.jpg"}))
    coco("coco_orphan", lambda c: c["annotations"].append({**c["annotations"][0], "id": 2, "image_id": 7}))
    coco("coco_crowd_text", lambda c: c["annotations"][0].update(iscrowd="no"))
    coco("coco_escape", lambda c: c["images"][1].update(file_name="../../split/red/0.png"))
    # a label value that is neither a class nor the ignore index (CamVid without classes.json: 11 is the ignore)
    shutil.copytree(fixtures / "segmentation" / "camvid", root / "cam_255")
    (root / "cam_255" / "classes.json").unlink()
    for mask in (root / "cam_255").glob("*annot/*.png"):
        a = np.asarray(Image.open(mask)).copy()
        a[0, 0] = 255
        Image.fromarray(a).save(mask)
    p["cam_255"] = root / "cam_255"
    p["camvid_model"] = Path(__file__).parents[1] / "examples" / "models" / "camvid_deeplabv3_mnv2.safetensors"
    # exported files whose card (metadata) was crafted (issue 28, 5)
    import onnx

    from mnv2.deploy import ExportOptions, export_onnx

    export_onnx(p["ckpt"], root / "good.onnx", ExportOptions())
    pre = {**meta.preprocessing.to_dict()}

    def crafted(name, **changes):
        m = onnx.load(str(root / "good.onnx"))
        props = {q.key: q.value for q in m.metadata_props}
        props.update({f"mnv2.{k}": v for k, v in changes.items()})
        del m.metadata_props[:]
        for k, v in props.items():
            entry = m.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(m, str(root / f"{name}.onnx"))
        p[name] = root / f"{name}.onnx"

    crafted("card_huge_size", preprocessing=json.dumps({**pre, "input_size": 100000}))
    crafted("card_nan_mean", preprocessing=json.dumps({**pre, "mean": [math.nan] * 3}))
    crafted("card_size_not_graph", preprocessing=json.dumps({**pre, "input_size": 64}))
    crafted("card_probabilities", output="probabilities")
    crafted("card_output_kind", output="heatmap")
    crafted("card_names", class_names=json.dumps([1, 2, 3]))
    crafted("card_two_names", class_names=json.dumps(["a", "b"]))
    crafted("card_task", task="pose")
    crafted("card_tile", tile=json.dumps("big"))
    crafted("card_nested", class_names="[" * 100_000 + "]" * 100_000)
    for name, text in {
        "scale": "augment:\n  scale: [0.5]\n",
        "momentum": "momentum: 2\n",
        "dropout": "dropout: 1.5\n",
        "poly": "poly_power: -1\n",
        "warmup": "warmup_epochs: .nan\n",
        "decay": "decay_rate: 0\n",
        "evalbatch": "eval_batch_size: 0\n",
        "hflip": "augment:\n  hflip: 2\n",
        "lrinf": "lr: .inf\n",
        "threads": "threads: 0\n",
    }.items():
        (root / f"{name}.yaml").write_text(text)
    # run directories whose train_state.pt is broken (config.yaml is valid)
    from mnv2.engine.config import load_recipe

    cfg = load_recipe("default").to_yaml()
    for name, content in {"empty": b"", "truncated": None, "garbage": b"not a torch file at all"}.items():
        d = root / f"run_{name}"
        d.mkdir()
        (d / "config.yaml").write_text(cfg)
        if content is None:
            torch.save({"config": {}, "model": state}, d / "train_state.pt")
            data = (d / "train_state.pt").read_bytes()
            content = data[: len(data) // 2]
        (d / "train_state.pt").write_bytes(content)
    d = root / "run_badcfg"
    d.mkdir()
    (d / "config.yaml").write_text(cfg.replace("lr: 0.4", "lr: .inf"))
    torch.save({"x": 1}, d / "train_state.pt")
    return p


def T(*args):
    """train on the tiny split folder, 1 epoch, one thread, no workers."""
    return ["train", "--data", "{split}", "--epochs", "1", "--workers", "0", "--threads", "1", "--out", "{out}", *args]


# (id, argv with {name} placeholders from `env` and {out}, a substring the one error line must hold)
CATALOGUE = [
    # train: flags
    ("train-lr-inf", T("--lr", "inf"), "lr must be a finite number"),
    ("train-lr-nan", T("--lr", "nan"), "lr must be a finite number"),
    ("train-lr-zero", T("--lr", "0"), "lr must be"),
    ("train-lr-text", T("--lr", "fast"), "--lr"),
    ("train-wd-nan", T("--weight-decay", "nan"), "weight_decay"),
    ("train-wd-negative", T("--weight-decay", "-1"), "weight_decay"),
    ("train-smoothing", T("--label-smoothing", "1.5"), "label_smoothing"),
    ("train-ema-one", T("--ema-decay", "1.0"), "ema_decay"),
    ("train-ema-nan", T("--ema-decay", "nan"), "ema_decay"),
    ("train-clip-negative", T("--grad-clip", "-1"), "grad_clip"),
    ("train-clip-inf", T("--grad-clip", "inf"), "grad_clip"),
    ("train-threads-negative", T("--threads", "-3"), "threads"),
    ("train-threads-zero", T("--threads", "0"), "threads"),
    ("train-workers-negative", T("--workers", "-1"), "workers"),
    ("train-batch-zero", T("--batch-size", "0"), "batch_size"),
    ("train-epochs-zero", T("--epochs", "0"), "epochs"),
    ("train-resolution-huge", T("--resolution", "100000"), "at most 8192"),
    ("train-resolution-small", T("--resolution", "16"), "resolution"),
    ("train-width-zero", T("--width", "0"), "width"),
    ("train-width-inf", T("--width", "inf"), "width"),
    ("train-val-split-all", T("--val-split", "0.999"), "leaves no training image"),
    ("train-val-split-nan", T("--val-split", "nan"), "val_split"),
    ("train-val-split-one", T("--val-split", "1.0"), "val_split"),
    ("train-freeze", T("--freeze", "stage:9"), "--freeze"),
    ("train-task", T("--task", "pose"), "task"),
    # train: recipes
    ("recipe-scale-one-value", T("--recipe", "{root}/scale.yaml"), "augment.scale"),
    ("recipe-momentum", T("--recipe", "{root}/momentum.yaml"), "momentum"),
    ("recipe-dropout", T("--recipe", "{root}/dropout.yaml"), "dropout"),
    ("recipe-poly-power", T("--recipe", "{root}/poly.yaml"), "poly_power"),
    ("recipe-warmup-nan", T("--recipe", "{root}/warmup.yaml"), "warmup_epochs"),
    ("recipe-decay-rate", T("--recipe", "{root}/decay.yaml"), "decay_rate"),
    ("recipe-eval-batch", T("--recipe", "{root}/evalbatch.yaml"), "eval_batch_size"),
    ("recipe-hflip", T("--recipe", "{root}/hflip.yaml"), "augment.hflip"),
    ("recipe-lr-inf", T("--recipe", "{root}/lrinf.yaml"), "lr"),
    ("recipe-missing", T("--recipe", "{root}/nope.yaml"), "nope.yaml"),
    # train: data and files
    ("train-one-class", ["train", "--data", "{one}", "--epochs", "1", "--workers", "0", "--out", "{out}"], "2 classes"),
    ("train-data-missing", ["train", "--data", "{root}/none", "--epochs", "1", "--out", "{out}"], "does not exist"),
    ("train-out-is-file", ["train", "--data", "{split}", "--epochs", "1", "--workers", "0", "--out", "{file}"],
     "a_file"),
    ("train-out-below-file", ["train", "--data", "{split}", "--epochs", "1", "--workers", "0", "--out",
                              "{file}/run"], "not a directory"),
    ("resume-empty-state", ["train", "--resume", "{root}/run_empty"], "train_state.pt"),
    ("resume-truncated-state", ["train", "--resume", "{root}/run_truncated"], "train_state.pt"),
    ("resume-garbage-state", ["train", "--resume", "{root}/run_garbage"], "train_state.pt"),
    ("resume-config-lr-inf", ["train", "--resume", "{root}/run_badcfg"], "lr must be a finite number"),
    ("resume-threads-zero", ["train", "--resume", "{root}/run_empty", "--threads", "0"], "threads must be"),
    ("resume-no-run", ["train", "--resume", "{dir}"], "config.yaml"),
    # detection / segmentation data
    ("detection-no-annotations", ["train", "--task", "detection", "--data", "{split}", "--epochs", "1", "--workers",
                                  "0", "--out", "{out}"], "not a detection dataset"),
    ("segmentation-no-labels", ["train", "--task", "segmentation", "--data", "{split}", "--epochs", "1", "--workers",
                                "0", "--out", "{out}"], "not a segmentation dataset"),
    ("detection-batch-one", ["train", "--task", "detection", "--data", "{voc}", "--batch-size", "1", "--epochs", "1",
                             "--width", "0.35", "--workers", "0", "--out", "{out}"], "at least 2 to train BatchNorm"),
    ("list-not-utf8", ["train", "--task", "detection", "--data", "{voc_bad_list}", "--epochs", "1", "--workers", "0",
                       "--out", "{out}"], "is not UTF-8 text"),
    ("classes-json-nested", ["train", "--task", "segmentation", "--data", "{cam_nested}", "--epochs", "1",
                             "--workers", "0", "--out", "{out}"], "nested too deeply"),
    ("label-neither-class-nor-ignore-train", ["train", "--task", "segmentation", "--data", "{cam_255}",
                                              "--ignore-index", "11", "--epochs", "1", "--workers", "0", "--out",
                                              "{out}"], "neither one of the 11 classes (0-10) nor the ignore index 11"),
    ("label-neither-class-nor-ignore-eval", ["eval", "{camvid_model}", "--data", "{cam_255}", "--confusion", "{out}"],
     "neither one of the 11 classes (0-10) nor the ignore index 11"),
    # ground truth is never changed in silence (issue 28, 8): an error naming the file and the object
    ("gt-box-reversed", ["eval", "{raccoon_model}", "--data", "{gt_reversed}", "--split", "train", "--confusion",
                         "{out}"],
     "raccoon-18.xml': object 0 (raccoon) box [201.0, 25.0, 32.0, 130.0]: no width (xmax <= xmin); fix the "
     "annotation, or pass --drop-invalid"),
    ("gt-box-huge", ["eval", "{raccoon_model}", "--data", "{gt_huge}", "--split", "train", "--confusion", "{out}"],
     "px outside the 240x156 image"),
    ("gt-box-negative", ["eval", "{raccoon_model}", "--data", "{gt_negative}", "--split", "train", "--confusion",
                         "{out}"],
     "reaches 80 px outside the 240x156 image"),
    ("gt-absolute-filename", ["eval", "{raccoon_model}", "--data", "{gt_abs_path}", "--confusion", "{out}"],
     "is not a path inside"),
    ("coco-duplicate-image-id", ["eval", "{raccoon_model}", "--data", "{coco_dup_ids}", "--confusion", "{out}"],
     "image id 1 is listed 2 times"),
    ("coco-annotation-of-no-image", ["eval", "{raccoon_model}", "--data", "{coco_orphan}", "--confusion", "{out}"],
     "1 annotation(s) of image id(s) the file does not list, e.g. 7"),
    ("coco-iscrowd-text", ["eval", "{raccoon_model}", "--data", "{coco_crowd_text}", "--confusion", "{out}"],
     "has iscrowd 'no'"),
    ("coco-file-name-escapes", ["eval", "{raccoon_model}", "--data", "{coco_escape}", "--confusion", "{out}"],
     "'../../split/red/0.png' is not a path inside"),
    # eval
    ("eval-batch-zero", ["eval", "{ckpt}", "--data", "{tv}", "--batch-size", "0"], "--batch-size"),
    ("eval-batch-negative", ["eval", "{ckpt}", "--data", "{tv}", "--batch-size", "-5"], "--batch-size"),
    ("eval-workers-negative", ["eval", "{ckpt}", "--data", "{tv}", "--workers", "-1"], "--workers"),
    ("eval-meta-not-json", ["eval", "{not_json}", "--data", "{tv}"], "not valid JSON"),
    ("eval-meta-no-model-config", ["eval", "{no_model_config}", "--data", "{tv}"], "model_config"),
    ("eval-int8-weights", ["eval", "{int8}", "--data", "{tv}"], "non-floating"),
    ("eval-nan-weights", ["eval", "{nan}", "--data", "{tv}", "--json"], "NaN or inf"),
    ("eval-inf-weights", ["eval", "{inf}", "--data", "{tv}"], "classifier.weight"),
    ("eval-missing-checkpoint", ["eval", "{root}/none.safetensors", "--data", "{tv}"], "does not exist"),
    ("eval-text-checkpoint", ["eval", "{text}", "--data", "{tv}"], "text.safetensors"),
    ("eval-tta", ["eval", "{ckpt}", "--data", "{tv}", "--tta", "zoom"], "zoom"),
    # predict
    ("predict-topk-zero", ["predict", "{ckpt}", "{img}", "--topk", "0"], "--topk"),
    # sources, jobs and tiles (issues 26, 27)
    ("predict-ray-without-job", ["predict", "{ckpt}", "{img}", "--ray", "local"], "--ray runs a job"),
    ("predict-vid-stride-zero", ["predict", "{ckpt}", "{root}/clip.mp4", "--vid-stride", "0"], "--vid-stride"),
    ("predict-reconnects-negative", ["predict", "{ckpt}", "{root}/clip.mp4", "--max-reconnects", "-1"],
     "--max-reconnects"),
    ("predict-video-tiles", ["predict", "{ckpt}", "{root}/clip.mp4", "--tile", "320"], "--tile is for still images"),
    ("predict-video-to-job-file", ["predict", "{ckpt}", "{root}/clip.mp4", "--out", "{out}/r.jsonl"],
     "give --out a folder"),
    ("predict-classifier-tiles", ["predict", "{ckpt}", "{img}", "--tile", "64"], "--tile is for detection"),
    ("predict-job-folder-missing", ["predict", "{ckpt}", "{img}", "--out", "{out}/r.jsonl"], "does not exist"),
    ("train-steps-zero", T("--steps", "0"), "steps must be an integer >= 1"),
    ("train-min-epochs-negative", T("--min-epochs", "-1"), "min_epochs must be an integer >= 0"),
    ("predict-threads-negative", ["predict", "{ckpt}", "{img}", "--threads", "-1"], "--threads"),
    ("predict-short-names", ["predict", "{short_names}", "{img}"], "names 2 classes"),
    ("predict-nan-weights", ["predict", "{nan}", "{img}"], "NaN or inf"),
    ("predict-int8-weights", ["predict", "{int8}", "{img}"], "non-floating"),
    ("predict-min-score", ["predict", "{ckpt}", "{img}", "--min-score", "2"], "--min-score"),
    ("predict-missing-input", ["predict", "{ckpt}", "{root}/none.png"], "none.png"),
    ("predict-truncated-onnx", ["predict", "{onnx}", "{img}"], "trunc.onnx"),
    # an exported file's card is validated like a checkpoint's (issue 28, 5)
    ("card-input-size-huge", ["predict", "{card_huge_size}", "{img}"], "input_size must be an integer in [1, 8192]"),
    ("card-nan-mean", ["predict", "{card_nan_mean}", "{img}"], "finite"),
    ("card-size-not-the-graphs", ["predict", "{card_size_not_graph}", "{img}"], "the graph takes 32x32"),
    ("card-probabilities-of-logits", ["predict", "{card_probabilities}", "{img}"], "output kind is wrong"),
    ("card-unknown-output-kind", ["predict", "{card_output_kind}", "{img}"], "output kind"),
    ("card-tile-not-pixels", ["predict", "{card_tile}", "{img}"], "training tile must be a whole number of pixels"),
    ("card-class-names-not-strings", ["predict", "{card_names}", "{img}"], "class names"),
    ("card-class-count-not-the-graphs", ["predict", "{card_two_names}", "{img}"], "names 2 classes"),
    ("card-unknown-task", ["predict", "{card_task}", "{img}"], "pose"),
    ("card-nested-json", ["predict", "{card_nested}", "{img}"], "nested too deeply"),
    ("serve-crafted-card", ["serve", "{card_huge_size}"], "input_size"),
    # convert
    ("convert-pickle-as-safetensors", ["convert", "{pickle}", "--out", "{out}"], "pickle.safetensors"),
    ("convert-missing-source", ["convert", "{root}/none.h5", "--out", "{out}"], "none.h5"),
    ("convert-out-is-dir", ["convert", "{ckpt}", "--out", "{dir}"], "is a directory"),
    ("convert-out-below-file", ["convert", "{ckpt}", "--out", "{file}/x.safetensors"], "not a directory"),
    ("quantize-out-is-dir", ["quantize", "{ckpt}", "--calibration", "{tv}", "--out", "{dir}"], "is a directory"),
    # export
    ("export-out-is-dir", ["export", "{ckpt}", "--out", "{dir}"], "a_dir"),
    ("export-input-size-zero", ["export", "{ckpt}", "--out", "{out}", "--input-size", "0"], "--input-size"),
    ("export-input-size-huge", ["export", "{ckpt}", "--out", "{out}", "--input-size", "100000"], "at most"),
    ("export-nan-weights", ["export", "{nan}", "--out", "{out}"], "NaN or inf"),
    ("export-format", ["export", "{ckpt}", "--out", "{out}", "--format", "coreml"], "coreml"),
    # quantize
    ("quantize-num-calibration-zero", ["quantize", "{ckpt}", "--calibration", "{tv}", "--out", "{out}",
                                       "--num-calibration", "0"], "--num-calibration"),
    ("quantize-workers-negative", ["quantize", "{ckpt}", "--calibration", "{tv}", "--out", "{out}", "--workers",
                                   "-1"], "--workers"),
    ("quantize-calibration-missing", ["quantize", "{ckpt}", "--calibration", "{root}/none", "--out", "{out}"],
     "none"),
    ("quantize-nan-weights", ["quantize", "{nan}", "--calibration", "{tv}", "--out", "{out}"], "NaN or inf"),
    ("export-non-square-classifier", ["export", "{ckpt}", "--out", "{out}", "--input-size", "64x48"], "segmenters"),
    ("export-size-spelling", ["export", "{ckpt}", "--out", "{out}", "--input-size", "64by48"], "WIDTHxHEIGHT"),
    ("quantize-classifier-input-size", ["quantize", "{ckpt}", "--calibration", "{tv}", "--out", "{out}",
                                        "--input-size", "64"], "--input-size"),
    # serve: every limit is checked before a model loads or a port is bound
    ("serve-port-range", ["serve", "{ckpt}", "--port", "70000"], "TCP port"),
    ("serve-port-negative", ["serve", "{ckpt}", "--port", "-1"], "--port"),
    ("serve-wait-nan", ["serve", "{ckpt}", "--max-wait-ms", "nan"], "finite"),
    ("serve-body-inf", ["serve", "{ckpt}", "--max-body-mb", "inf"], "finite"),
    ("serve-body-zero", ["serve", "{ckpt}", "--max-body-mb", "0"], "> 0"),
    ("serve-pixels-nan", ["serve", "{ckpt}", "--max-megapixels", "nan"], "finite"),
    ("serve-batch-zero", ["serve", "{ckpt}", "--max-batch", "0"], "--max-batch"),
    ("serve-decode-threads-zero", ["serve", "{ckpt}", "--decode-threads", "0"], "--decode-threads"),
    ("serve-public-no-key", ["serve", "{ckpt}", "--host", "0.0.0.0"], "API key"),
    ("serve-missing-model", ["serve", "{root}/none.safetensors"], "none.safetensors"),
    ("serve-engine", ["serve", "{ckpt}", "--engine", "warp"], "warp"),
    # bench and summary
    ("bench-resolution-huge", ["bench", "--resolution", "100000"], "at most 8192"),
    ("bench-batch-zero", ["bench", "--batch", "0"], "--batch"),
    ("bench-threads-zero", ["bench", "--threads", "0"], "--threads"),
    ("bench-rounds-zero", ["bench", "--rounds", "0"], "--rounds"),
    ("bench-memory-resolution-huge", ["bench", "--memory", "--resolution", "100000"], "at most 8192"),
    ("summary-resolution-huge", ["summary", "--resolution", "100000"], "at most 8192"),
    ("summary-width-nan", ["summary", "--width", "nan"], "nan"),
    ("unknown-verb", ["fly"], "fly"),
]  # fmt: skip


def run(argv, capsys):
    """``main(argv)`` in-process: (exit status, stdout, stderr); argparse's SystemExit counts as the status."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc, err, needle=""):
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("mnv2: error:"), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("argv", "needle"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_one_line_exit_2(env, argv, needle, tmp_path, capsys):
    out = tmp_path / "out" / "result"
    names = {k: str(v) for k, v in env.items()}
    argv = [a.format(**names, out=out) for a in argv]
    before = {p: sorted(Path(p).iterdir()) for p in (env["dir"],)}
    rc, _, err = run(argv, capsys)
    assert_one_error_line(rc, err, needle)
    assert not out.exists() and not (tmp_path / "out").exists(), "a failed command left its output behind"
    assert {p: sorted(Path(p).iterdir()) for p in before} == before
    assert env["file"].read_text() == "x"
    leftovers = [f for f in env["root"].rglob(".*.tmp")]
    assert not leftovers


def test_catalogue_is_large():
    assert len(CATALOGUE) >= 50
    verbs = {c[1][0] for c in CATALOGUE}
    assert {"train", "eval", "predict", "convert", "export", "quantize", "bench", "serve"} <= verbs


# ---- the formerly silent cases: the correct behaviour ----


def test_sixteen_bit_and_float_images_predict_like_eight_bit(env, tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 40), dtype=np.uint16)
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "g8.png")
    Image.fromarray(a * 257).save(tmp_path / "g16.png")
    Image.fromarray(a.astype(np.float32) / 255).save(tmp_path / "gf.tiff")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    results = []
    for name in ("g8.png", "g16.png", "gf.tiff"):
        rc, out, _ = run(["predict", env["ckpt"], tmp_path / name, "--json", "--topk", "3"], capsys)
        assert rc == 0
        results.append([(c["class"], round(c["prob"], 5)) for c in json.loads(out)[0]["top"]])
    assert results[0] == results[1] == results[2]


def test_eval_confusion_dir_reports_the_file_written(env, tmp_path, capsys):
    d = tmp_path / "reports"
    d.mkdir()
    rc, out, _ = run(["eval", env["ckpt"], "--data", env["tv"], "--workers", "0", "--confusion", d, "--json"], capsys)
    assert rc == 0
    r = json.loads(out)
    assert Path(r["confusion_png"]).is_file() and Path(r["confusion_png"]).parent == d
    assert not Path(str(d) + ".png").exists()


@pytest.mark.parametrize("where", ["missing-dir", "read-only"])
def test_eval_prints_results_when_the_plot_cannot_be_written(env, tmp_path, capsys, monkeypatch, where):
    args = ["eval", env["ckpt"], "--data", env["tv"], "--workers", "0", "--json"]
    if where == "missing-dir":
        args += ["--confusion", tmp_path / "no" / "such" / "c.png"]
    else:  # root ignores permissions: simulate the read-only file system
        from matplotlib.figure import Figure

        def readonly(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system", "good.confusion.png")

        monkeypatch.setattr(Figure, "savefig", readonly)
    rc, out, err = run(args, capsys)
    assert rc == 0
    r = json.loads(out)
    assert r["n"] == 6 and r["confusion_png"] is None and "not written" in r["confusion_error"]
    assert "mnv2: warning:" in err and "not written" in err and "Traceback" not in err
    assert "NaN" not in out


def test_json_output_is_strict():
    from mnv2.cli import _dumps

    text = _dumps({"loss": math.nan, "x": [math.inf, 1.0], "y": {"z": -math.inf}})
    assert json.loads(text) == {"loss": None, "x": [None, 1.0], "y": {"z": None}}


def test_no_checkpoint_with_non_finite_weights_is_written(tmp_path):
    model = mobilenet_v2(width_mult=0.35, num_classes=3)
    with torch.no_grad():
        model.classifier.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteError, match=r"classifier\.weight"):
        save_checkpoint(tmp_path / "x.safetensors", model, CheckpointMeta(model.config))
    assert list(tmp_path.iterdir()) == []


def test_training_stops_on_non_finite_val_loss_or_weights():
    from mnv2.engine.loop import _check_finite

    model = mobilenet_v2(width_mult=0.35, num_classes=3)
    _check_finite(0, 5, {"loss": 1.0}, model)
    with pytest.raises(NonFiniteError, match="epoch 2, step 7"):
        _check_finite(1, 7, {"loss": math.nan}, model)
    with torch.no_grad():
        model.classifier.bias[0] = math.inf
    with pytest.raises(NonFiniteError, match=r"classifier\.bias"):
        _check_finite(0, 3, {"loss": 1.0}, model)


def test_training_removes_stale_temporaries_and_still_works(env, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.safetensors.abc123.tmp"
    stale.write_bytes(b"half")
    argv = ["train", "--data", env["tv"], "--epochs", "1", "--workers", "0", "--threads", "1", "--batch-size", "8",
            "--width", "0.35", "--resolution", "32", "--out", out]  # fmt: skip
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    assert not stale.exists() and "removed .last.safetensors.abc123.tmp" in stdout
    assert (out / "best.safetensors").is_file() and not list(out.glob(".*.tmp"))


def test_io_errors_are_one_line(env, tmp_path, capsys, monkeypatch):
    import mnv2.deploy

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.onnx"))

    monkeypatch.setattr(mnv2.deploy, "export", full)
    rc, _, err = run(["export", env["ckpt"], "--out", tmp_path / "m.onnx"], capsys)
    assert_one_error_line(rc, err, "no space left on device")
    assert "m.onnx" in err


def test_a_bug_is_one_line_asking_for_a_report(env, capsys, monkeypatch):
    import mnv2.cli.models

    def boom(args):
        raise RuntimeError("unexpected\nstate")

    monkeypatch.setattr(mnv2.cli.models, "run", boom)  # the verb's function, as the parser finds it
    rc, _, err = run(["models"], capsys)
    assert rc == EXIT_BUG == 70
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bug" in lines[0] and "report" in lines[0] and "Traceback" not in err
    monkeypatch.setenv("MNV2_DEBUG", "1")
    rc, _, err = run(["models"], capsys)
    assert rc == 70 and "Traceback" in err


def test_subprocess_error_is_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "mnv2.cli", "eval", "/no/such.safetensors", "--batch-size", "-5"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TQDM_DISABLE": "1"},
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("mnv2: error:")


# ---- Keras converter: every body layer is checked ----


@pytest.fixture(scope="module")
def keras_model_file(tmp_path_factory):
    import keras

    path = tmp_path_factory.mktemp("keras") / "mnv2.keras"
    keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=4).save(path)
    return path


def _edit_keras(src: Path, dst: Path, name: str, edit) -> Path:
    import zipfile

    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    layers = {la["config"]["name"]: la for la in config["config"]["layers"]}
    edit(layers[name])
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    return dst


def _swish(la):
    la["class_name"], la["config"] = "Activation", {"name": la["config"]["name"], "activation": "swish"}


KERAS_EDITS = [
    ("swish", "block_3_expand_relu", _swish, "'block_3_expand_relu' differs from MobileNetV2: Activation('swish')"),
    ("relu-unbounded", "Conv1_relu", lambda la: la["config"].update(max_value=None), "expected ReLU6"),
    ("stride", "block_2_depthwise", lambda la: la["config"].update(strides=[2, 2]), "'block_2_depthwise'"),
    ("kernel", "block_5_depthwise", lambda la: la["config"].update(kernel_size=[5, 5]), "kernel [5, 5]"),
    ("activation", "block_1_project", lambda la: la["config"].update(activation="relu"), "activation 'relu'"),
    ("padding", "block_4_depthwise", lambda la: la["config"].update(padding="valid"), "padding 'valid'"),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("layer", "edit", "needle"), [k[1:] for k in KERAS_EDITS], ids=[k[0] for k in KERAS_EDITS])
def test_keras_body_layer_that_differs_is_named(keras_model_file, layer, edit, needle, tmp_path, capsys):
    src = _edit_keras(keras_model_file, tmp_path / "edited.keras", layer, edit)
    out = tmp_path / "out" / "x.safetensors"
    rc, _, err = run(["convert", src, "--out", out], capsys)
    assert_one_error_line(rc, err, needle)
    assert not out.exists() and not out.parent.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_keras_unedited_model_still_converts(keras_model_file, tmp_path, capsys):
    rc, _, err = run(["convert", keras_model_file, "--out", tmp_path / "x.safetensors"], capsys)
    assert rc == 0, err


# ---- issue 28: hostile files (one shared reader: formats, decoder failures, EXIF orientation) ----
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def test_a_postscript_file_named_jpg_never_reaches_ghostscript(env, tmp_path, capsys, monkeypatch):
    """Pillow's EPS plugin runs `gs` on what it opens: only the documented formats may open a file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs-ran"
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (tmp_path / "photo.jpg").write_bytes(POSTSCRIPT)
    rc, out, _ = run(["predict", env["ckpt"], tmp_path / "photo.jpg", env["img"], "--json"], capsys)
    assert rc == 0
    bad, good = json.loads(out)
    assert "not a supported image" in bad["error"] and "JPEG, PNG" in bad["error"] and good["top"]
    rc, _, err = run(["predict", env["ckpt"], tmp_path / "photo.jpg", "--strict"], capsys)
    assert_one_error_line(rc, err, "not a supported image")
    assert not marker.exists(), "Ghostscript was started"


def test_fuzzed_files_are_one_skipped_file_each(env, tmp_path, capsys):
    """Mutated real photos in every supported format: each is decoded or skipped with its reason; the folder's
    other results are kept (a decoder's NotImplementedError or AttributeError used to end the run with exit 70)."""
    from mnv2.data.images import ImageError, load_image

    photo = Image.open(Path(__file__).parents[2] / "shared/data/raccoon/images/raccoon-1.jpg").convert("RGB")
    photo = photo.resize((48, 32))
    rng = np.random.default_rng(0)
    folder = tmp_path / "fuzz"
    folder.mkdir()
    n = 0
    for fmt, ext in (
        ("JPEG", "jpg"),
        ("PNG", "png"),
        ("TIFF", "tif"),
        ("GIF", "gif"),
        ("WEBP", "webp"),
        ("BMP", "bmp"),
    ):
        path = tmp_path / f"clean.{ext}"
        photo.save(path, format=fmt)
        data = bytearray(path.read_bytes())
        for i in range(40):
            mutant = bytearray(data)
            for j in rng.integers(0, len(mutant), size=int(rng.integers(1, 12))):
                mutant[j] = int(rng.integers(0, 256))
            if i % 5 == 0:
                mutant = mutant[: int(rng.integers(8, len(mutant)))]
            (folder / f"{fmt}-{i}.{ext}").write_bytes(bytes(mutant))
            n += 1
    outcomes = {"decoded": 0, "skipped": 0}
    for f in sorted(folder.iterdir()):
        try:
            assert load_image(f).mode == "RGB"
            outcomes["decoded"] += 1
        except ImageError:
            outcomes["skipped"] += 1
    assert outcomes["skipped"] > 0 and sum(outcomes.values()) == n
    rc, out, err = run(["predict", env["ckpt"], folder, env["img"], "--json"], capsys)
    assert rc == 0, err
    results = json.loads(out)
    assert len(results) == n + 1 and sum("error" in r for r in results) == outcomes["skipped"]
    assert results[-1]["top"]  # the good file after the bad ones


def test_exif_orientation_is_applied_wherever_an_image_is_read(tmp_path):
    """A phone photo stored sideways with orientation 6 ("rotate 90 clockwise to view") reads upright, at the
    size a viewer shows, from a file and from an upload alike (issue 28, 7)."""
    from mnv2.data.images import decode_image, load_image

    upright = Image.open(Path(__file__).parents[2] / "shared/data/raccoon/images/raccoon-1.jpg").convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.png", exif=exif)
    assert Image.open(tmp_path / "phone.png").size == (upright.height, upright.width)
    for im in (load_image(tmp_path / "phone.png"), decode_image((tmp_path / "phone.png").read_bytes())):
        assert im.size == upright.size
        assert np.array_equal(np.asarray(im), np.asarray(upright))


def test_eval_never_writes_into_the_models_folder_unasked(env, tmp_path, capsys, monkeypatch):
    """Evaluating a shipped model wrote its picture into the repository (issue 28, 12): the default is the run
    directory when the checkpoint is in one, else the current directory."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(env["ckpt"], models / "good.safetensors")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    rc, out, _ = run(["eval", models / "good.safetensors", "--data", env["tv"], "--workers", "0", "--json"], capsys)
    assert rc == 0 and Path(json.loads(out)["confusion_png"]) == work / "good.confusion.png"
    assert sorted(p.name for p in models.iterdir()) == ["good.safetensors"]
    (models / "config.yaml").write_text("lr: 0.1\n")  # now a run directory: its picture goes there
    rc, out, _ = run(["eval", models / "good.safetensors", "--data", env["tv"], "--workers", "0", "--json"], capsys)
    assert Path(json.loads(out)["confusion_png"]) == models / "good.confusion.png"


def test_drop_invalid_drops_bad_ground_truth_with_a_count_and_says_so(env, tmp_path, capsys):
    """Issue 28, 8: with --drop-invalid the invalid box is dropped, counted in --json's ``skipped`` and printed; the
    metric is then over the remaining ground truth (raccoon-18 has no box left). A split that holds no invalid box
    is evaluated as it is: an invalid box elsewhere (another split) changes nothing there."""
    argv = ["eval", str(env["raccoon_model"]), "--confusion", str(tmp_path), "--workers", "0", "--split", "train"]
    assert main([*argv, "--data", str(env["gt_reversed"]), "--drop-invalid", "--json"]) == 0
    dropped = json.loads(capsys.readouterr().out)
    assert dropped["skipped"] == {"corrupt": 0, "non_image": 0, "invalid_boxes": 1}
    assert main([*argv, "--data", str(env["voc"]), "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["skipped"]["invalid_boxes"] == 0 and 0 < dropped["mAP50"] <= clean["mAP50"]
    assert main([*argv, "--data", str(env["gt_negative"]), "--drop-invalid"]) == 0
    assert "skipped: 1 invalid-boxes" in capsys.readouterr().out
    val = [*argv[:-2], "--json", "--split", "val"]
    assert main([*val, "--data", str(env["gt_reversed"])]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"]["invalid_boxes"] == 0
