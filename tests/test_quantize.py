"""INT8: calibrated, per-channel, BN-folded quantization keeps held-out accuracy; QAT pieces train."""

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from deploy_data import accuracy, batches, make_images
from mnv2.cli import main
from mnv2.deploy import read_onnx_metadata
from mnv2.deploy.exporters.onnx import read_model_metadata
from mnv2.deploy.quantize import (
    AUTO_ORDER,
    TFLITE_AUTO_ORDER,
    QuantizationError,
    check_tflite_bias_scales,
    quantize,
)
from mnv2.deploy.runtime.engines import load_engine
from mnv2.engine.qat import convert_qat, prepare_qat
from mnv2.errors import ConfigError
from mnv2.weights.checkpoint import load_checkpoint

MAX_DROP = 1.0  # points of top-1, the bound


def test_quantize_auto_keeps_accuracy(tiny_checkpoint, tmp_path):
    out = tmp_path / "int8.onnx"
    report = quantize(tiny_checkpoint, out, batches(512, seed=3), held_out=batches(1000, seed=7))
    # every method was measured on the selection split and the best one was chosen
    assert [c.method for c in report.candidates] == list(AUTO_ORDER)
    best = max(report.candidates, key=lambda c: (c.agreement, c.top1))
    assert report.method == best.method
    assert report.fp32_top1 > 70  # the fixture model learnt the task, so the bound below means something
    assert report.drop <= MAX_DROP and report.agreement >= 90
    assert report.n_eval == 1000 and report.per_channel and report.bn_folded
    # the file really is INT8: per-channel int8 weights (one scale per output channel), metadata kept
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")]
    assert len(dq) >= 50  # every conv of MobileNetV2 0.35 (52 convs) + the classifier
    assert all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dq)
    assert all(inits[n.input[1]].dims[0] == inits[n.input[0]].dims[0] for n in dq if "conv" in n.input[0])
    meta = read_onnx_metadata(out)
    assert meta["precision"] == "int8" and meta["quantization"]["method"] == report.method
    assert meta["class_names"] is not None


def test_quantize_cli_with_npz(tiny_checkpoint, tmp_path, capsys):
    x, y = make_images(256, seed=21)
    np.savez(tmp_path / "calib.npz", x=x, y=y)
    xe, ye = make_images(400, seed=22)
    np.savez(tmp_path / "eval.npz", x=xe, y=ye)
    out = tmp_path / "q.onnx"
    argv = ["quantize", str(tiny_checkpoint), "--calibration", str(tmp_path / "calib.npz")]
    argv += ["--eval", str(tmp_path / "eval.npz"), "--out", str(out), "--method", "percentile", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "percentile" and report["n_eval"] == 400
    assert report["drop"] <= MAX_DROP and out.is_file()


@pytest.mark.isolated  # converts with litert-torch in-process; see the marker's note in pyproject.toml
def test_quantize_tflite_int8_keeps_accuracy_and_runs_on_litert(tiny_checkpoint, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "int8.tflite"
    report = quantize(tiny_checkpoint, out, batches(512, seed=3), held_out=batches(1000, seed=7))
    assert report.output_format == "tflite" and [c.method for c in report.candidates] == list(TFLITE_AUTO_ORDER)
    assert report.method == max(report.candidates, key=lambda c: (c.agreement, c.top1)).method
    assert report.fp32_top1 > 70 and report.drop <= MAX_DROP and report.agreement >= 90
    # really INT8: int8 conv kernels with one scale per output channel (52 convs in MobileNetV2 0.35)
    interp = Interpreter(str(out))
    tensors = interp.get_tensor_details()
    per_channel = [
        t for t in tensors
        if t["dtype"] == np.int8 and len(t["shape"]) == 4 and len(t["quantization_parameters"]["scales"]) > 1
    ]  # fmt: skip
    assert len(per_channel) >= 50
    # fully integer, residual adds included: with torch 2.13's export, litert-torch left them float (9 of 10 as
    # DEQUANTIZE, ADD, QUANTIZE, with float32 tensors between) until mnv2 annotated them itself
    assert [t["name"] for t in tensors if t["dtype"] == np.float32] == []
    meta = read_model_metadata(out)
    assert meta["precision"] == "int8" and meta["quantization"]["method"] == report.method
    assert meta["class_names"] is not None and meta["preprocessing"].input_size == 32
    # the engine layer runs it as INT8 LiteRT, and only there
    engine = load_engine(out)
    assert (engine.name, engine.precision) == ("litert", "int8")
    data = batches(300, seed=11)
    got = np.concatenate([engine(x) for x, _ in data]).argmax(1)
    ref = np.concatenate([load_engine(tiny_checkpoint, "torch")(x) for x, _ in data]).argmax(1)
    assert (got == ref).mean() >= 0.9
    # every int8 conv/classifier is self-consistent: bias scale = input scale x weight scale (per channel)
    assert check_tflite_bias_scales(out) >= 50
    # ... and a file that breaks it, as litert-torch's lost requantization did (bias scale 0.11x), is refused
    blob = out.read_bytes()
    details = {t["index"]: t for t in tensors}
    op = max(
        (o for o in interp._get_ops_details() if o["op_name"] == "CONV_2D"),
        key=lambda o: len(details[o["inputs"][2]]["quantization_parameters"]["scales"]),
    )
    scales = details[op["inputs"][2]]["quantization_parameters"]["scales"].astype("<f4")
    assert blob.count(scales.tobytes()) == 1  # the bias's scale vector, stored once in the flatbuffer
    broken = blob.replace(scales.tobytes(), (scales * np.float32(0.11)).tobytes())
    with pytest.raises(QuantizationError, match=rf"inconsistent int8 CONV_2D \(op {op['index']}, .*0\.11x input"):
        check_tflite_bias_scales(broken)
    with pytest.raises(ConfigError, match=r"does not read \.tflite"):
        load_engine(out, "onnxruntime")
    with pytest.raises(ConfigError, match=r"name it \.onnx or \.tflite"):
        quantize(tiny_checkpoint, tmp_path / "x.pb", batches(64, seed=3))
    with pytest.raises(ConfigError, match="unknown calibration method 'entropy' for tflite"):
        quantize(tiny_checkpoint, out, batches(64, seed=3), method="entropy")


def test_qat_prepare_train_convert(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    qat = prepare_qat(model)
    # fake-quantized forward tracks fp32 once the observers have seen data
    with torch.no_grad():
        for xb, _ in batches(256, seed=30):
            qat(torch.from_numpy(xb))
    qat.eval()
    held_out = batches(500, seed=7)
    assert abs(accuracy(qat, held_out) - accuracy(model, held_out)) <= 5
    # fine-tuning under fake quantization lowers the loss
    qat.train()
    opt = torch.optim.SGD(qat.parameters(), lr=1e-3, momentum=0.9)
    train = batches(1024, seed=31, batch=32)
    losses = []
    for xb, yb in train:
        loss = F.cross_entropy(qat(torch.from_numpy(xb)), torch.from_numpy(yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    plain = convert_qat(qat)
    assert set(plain.state_dict()) == set(model.state_dict())
    assert accuracy(plain, held_out) >= accuracy(model, held_out) - 2
