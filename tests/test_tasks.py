"""The task interface (issue: one engine for every task): classification as the first task, checkpoints that name
their task, config flags from one place, the import layers, and what `--resume` honours."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mnv2 import load_checkpoint
from mnv2.engine.config import RESUME_FLAGS, TrainConfig, apply_overrides, flag_fields, load_recipe
from mnv2.engine.loop import csv_fields, train
from mnv2.tasks import TASKS, get_task
from mnv2.weights.checkpoint import read_checkpoint_meta

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = FIXTURES / "main-217d691-default.safetensors"  # written by main at 217d691, before tasks existed
QUIET = {"log": lambda *_: None}


def tiny(**kw) -> TrainConfig:
    values = {"width": 0.35, "resolution": 32, "epochs": 1, "batch_size": 8, "threads": 1, "workers": 0, **kw}
    return apply_overrides(load_recipe("default"), values)


def test_a_checkpoint_from_before_tasks_loads_as_classification_and_scores_the_same(tmp_path):
    """`make run`'s best checkpoint from main at 217d691: its file has no `task`; it must still load as a classifier
    and reach the test-split top-1 that main's own `mnv2 eval --json` printed for it."""
    from mnv2.engine.evaluate import evaluate_checkpoint

    header = json.loads(read_checkpoint_meta(LEGACY).to_json())
    raw = json.loads(_raw_metadata(LEGACY))
    assert "task" not in raw  # really a file from before the change
    assert header["task"] == "classification" and header["head"] is None
    recorded = json.loads((FIXTURES / "main-217d691-default.eval.json").read_text())
    png = tmp_path / "confusion.png"
    result = evaluate_checkpoint(LEGACY, "fashion-mnist", confusion_png=png, batch_size=500, workers=0)
    assert png.stat().st_size > 0
    assert result["n"] == recorded["n"] == 10_000
    assert result["top1"] == pytest.approx(recorded["top1"], abs=1e-9)
    assert result["top5"] == pytest.approx(recorded["top5"], abs=1e-9)


def _raw_metadata(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["mnv2"]


def test_checkpoints_name_their_task_and_an_unknown_task_is_refused(tmp_path):
    from mnv2 import CheckpointError, mobilenet_v2, save_checkpoint
    from mnv2.weights.checkpoint import CheckpointMeta

    model = mobilenet_v2(width_mult=0.35, num_classes=3)
    path = save_checkpoint(tmp_path / "m.safetensors", model, CheckpointMeta(model.config))
    assert json.loads(_raw_metadata(path))["task"] == "classification"
    assert load_checkpoint(path).config == model.config
    bad = save_checkpoint(tmp_path / "b.safetensors", model, CheckpointMeta(model.config, task="captioning"))
    with pytest.raises(CheckpointError, match="unknown task 'captioning'"):
        load_checkpoint(bad)


def test_train_flags_come_from_the_config_fields(capsys):
    from mnv2.cli import build_parser

    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    flags = {a.option_strings[0] for a in train_parser._actions if a.option_strings}
    for f in flag_fields():
        assert "--" + f.name.replace("_", "-") in flags, f.name
    assert flags - {"--" + f.name.replace("_", "-") for f in flag_fields()} == {"-h", "--out", "--recipe", "--resume"}
    assert set(RESUME_FLAGS) == {"epochs", "workers", "threads"}
    args = parser.parse_args(["train", "--out", "x", "--padding", "tf", "--lr", "0.5", "--compile"])
    assert (args.padding, args.lr, args.compile, args.epochs) == ("tf", 0.5, True, None)


def test_metrics_csv_columns_are_the_evaluators(tmp_path, image_folder):
    task = get_task("classification")
    fields = csv_fields(task, task.evaluator(["a", "b"]).columns)
    assert fields == ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "epoch_s", "img_s")
    train(tiny(data=str(image_folder)), tmp_path / "run", **QUIET)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == fields


def test_resume_honours_workers_and_threads_and_warns_on_threads(tmp_path, image_folder):
    """A resumed run used to rebuild its config from train_state.pt and keep only --epochs."""
    run = tmp_path / "run"
    train(tiny(data=str(image_folder), workers=0, threads=1), run, **QUIET)
    logs = []
    config = apply_overrides(tiny(data=str(image_folder)), {"epochs": 2, "workers": 1, "threads": 2})
    train(config, run, resume=True, log=logs.append)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["epochs"], saved["workers"], saved["threads"]) == (2, 1, 2)
    assert torch.get_num_threads() == 2
    assert any("bit-for-bit" in m and "--threads 2" in m for m in logs)
    assert logs[0].startswith(f"resuming {run} at epoch 2/2 (honours --workers, --epochs, --threads;")
    torch.set_num_threads(1)


def test_train_sets_the_padding_mode(tmp_path, image_folder):
    train(tiny(data=str(image_folder), padding="tf"), tmp_path / "run", **QUIET)
    model = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert model.config.padding == "tf" and model.stem.pad.__class__.__name__ != "Identity"
    with pytest.raises(Exception, match="padding"):
        tiny(padding="same")


def test_output_kind_is_one_property():
    from mnv2 import MobileNetV2Config

    assert MobileNetV2Config(output="softmax").output_kind == "probabilities"
    assert MobileNetV2Config().output_kind == "logits" and not MobileNetV2Config().returns_probabilities


def test_every_task_supplies_every_part():
    for name, task in TASKS.items():
        assert task.name == name
        for f in dataclasses.fields(task):
            optional = f.default is None  # export_module: only tasks whose export differs from the model
            assert optional or getattr(task, f.name) is not None, (name, f.name)
        assert task.tta_modes[0] == "none"


def test_runtime_engines_do_not_import_training(tiny_checkpoint, tmp_path):
    """`mnv2 predict --engine onnxruntime` used to import the training loop (kornia, matplotlib, torch.distributed
    process groups) through engine.evaluate."""
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "x.png")
    code = (
        "import sys; from mnv2.deploy.runtime.predict import predict; "
        f"r = predict({str(tiny_checkpoint)!r}, [{str(tmp_path / 'x.png')!r}], 'torch', topk=1); "
        "assert r[0]['top'], r; "
        "bad = [m for m in ('kornia', 'matplotlib', 'mnv2.engine', 'mnv2.engine.loop') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("task, momentum", [("detection", 0.03), ("segmentation", 0.01)])
def test_detection_and_segmentation_recipes_set_bn_momentum_over_an_init_backbones(task, momentum):
    """A Keras --init backbone carries BN momentum 0.001; kept for the new head layers, their running statistics
    stayed at 0/1 in a 14-epoch raccoon run and the eval model gave one box for every image (val mAP50 0.48 on
    train and val alike). The recipes set every layer's momentum."""
    from torch import nn

    from mnv2.engine.config import apply_overrides, load_recipe
    from mnv2.models.mobilenetv2 import MobileNetV2Config
    from mnv2.tasks import get_task

    data = Path(__file__).parent / "fixtures" / "segmentation" / "camvid"
    config = apply_overrides(load_recipe(task), {"data": str(data), "width": 0.35})
    keras_like = MobileNetV2Config(width_mult=0.35, bn_momentum=0.001, padding="tf")
    model = get_task(task).build_model(config, ["a", "b"], keras_like)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {momentum}
    assert model.config.bn_momentum == momentum  # recorded in the checkpoint's model_config
