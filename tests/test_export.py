"""Export: every installed format matches torch, metadata and preprocessing survive, bad requests fail clearly."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deploy_data import CLASS_NAMES, PRE, batches, make_images, preprocess
from mnv2.cli import main
from mnv2.data import Preprocessing
from mnv2.deploy import ExportError, ExportOptions, export, fold_batchnorm, read_onnx_metadata
from mnv2.deploy.exporters.onnx import check_parity
from mnv2.errors import ConfigError
from mnv2.models import mobilenet_v2
from mnv2.models.fold import count_batchnorms
from mnv2.weights.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint


def test_fold_batchnorm_keeps_outputs(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    folded = fold_batchnorm(model)
    assert count_batchnorms(model) > 0 and count_batchnorms(folded) == 0
    x = torch.from_numpy(batches(16, 5)[0][0])
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-4)


def test_onnx_cli_export_parity_metadata_dynamic_batch(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_checkpoint), "--format", "onnx", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parity_max_abs"] <= 1e-4 and report["parity_batches"] == [1, 3]
    onnx.checker.check_model(str(out))
    meta = read_onnx_metadata(out)
    assert meta["class_names"] == CLASS_NAMES and meta["preprocessing"] == PRE
    assert meta["output"] == "logits" and meta["bn_folded"] is True
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "BatchNormalization" not in ops
    # real (trained-model) inputs, an unseen batch size: same logits and same predictions as torch
    model = load_checkpoint(tiny_checkpoint)
    x, y = batches(37, 9, batch=37)[0]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == y).mean() > 0.6  # the model learnt the task; the export kept it


def test_onnx_baked_preprocessing_takes_uint8_and_returns_probabilities(tiny_checkpoint, tmp_path):
    out = tmp_path / "baked.onnx"
    export(tiny_checkpoint, out, "onnx", ExportOptions(bake_preprocessing=True))
    images, _ = make_images(8, seed=4)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape[1:] == [PRE.input_size] * 2 + [3]
    probs = sess.run(None, {"image": images})[0]
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    with torch.inference_mode():
        want = load_checkpoint(tiny_checkpoint)(torch.from_numpy(preprocess(images))).softmax(-1).numpy()
    assert np.abs(probs - want).max() <= 1e-4
    assert read_onnx_metadata(out)["input"]["input_dtype"] == "uint8"


def test_onnx_dynamic_size_for_torch_padding(tmp_path):
    model = mobilenet_v2(width_mult=0.35, num_classes=5)
    report = export(model, tmp_path / "dyn.onnx", "onnx", ExportOptions(dynamic_size=True, input_size=64))
    assert report.input_shape == ["batch", 3, "height", "width"] and report.parity_max_abs <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 3, 128, 96), np.float32)})[0].shape == (2, 5)


@pytest.mark.isolated
@pytest.mark.parametrize("fmt", ["tflite", "executorch"])
def test_other_installed_formats_pass_parity(fmt, tmp_path):
    # tf padding: the size-dependent TF "SAME" pads must survive each converter
    model = mobilenet_v2(width_mult=0.35, num_classes=8, padding="tf")
    with torch.no_grad():  # non-trivial BN statistics, so that folding matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    ckpt = save_checkpoint(
        tmp_path / "m.safetensors", model, CheckpointMeta(model.config, Preprocessing(input_size=64))
    )
    out = tmp_path / f"m.{fmt}"
    # Through the CLI in a fresh process, as users run it: LiteRT's and ExecuTorch's native converters loaded
    # into one long-lived process together have crashed it (segfault), so each export gets its own.
    cmd = [sys.executable, "-m", "mnv2.cli", "export", str(ckpt), "--format", fmt, "--out", str(out)]
    r = subprocess.run([*cmd, "--static-batch", "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["parity_max_abs"] <= 1e-4 and out.stat().st_size > 100_000
    assert json.loads(out.with_name(out.name + ".json").read_text())["mnv2.output"] == "logits"


def test_parity_check_rejects_a_wrong_export():
    model = mobilenet_v2(width_mult=0.35, num_classes=4).eval()
    spec = {"input_shape": ["batch", 3, 32, 32], "input_dtype": "float32"}

    def off(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy() + 1e-3

    with pytest.raises(ExportError, match="differs from torch"):
        check_parity(model, off, spec, (1,), 32, 1e-4, "onnx")


def test_unsupported_configurations_fail_clearly(tmp_path, capsys):
    tf_model = mobilenet_v2(width_mult=0.35, num_classes=4, padding="tf")
    with pytest.raises(ConfigError, match=r"padding='tf'.*input size"):
        export(tf_model, tmp_path / "x.onnx", "onnx", ExportOptions(dynamic_size=True))
    with pytest.raises(ConfigError, match="static shapes"):
        export(tf_model, tmp_path / "x.tflite", "tflite", ExportOptions())
    with pytest.raises(ConfigError, match="too small"):
        export(tf_model, tmp_path / "x.onnx", "onnx", ExportOptions(input_size=16))
    assert main(["export", "nope.safetensors", "--format", "coreml", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "nope.safetensors", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "unknown export format 'coreml'" in err and "does not exist" in err
    assert not any(tmp_path.iterdir())  # nothing half-written
