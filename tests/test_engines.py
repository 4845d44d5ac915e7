"""Inference engines agree with torch, are cached warm, and the bench prints what it promises."""

import json

import numpy as np
import pytest
import torch

from deploy_data import batches
from mnv2.cli import main
from mnv2.deploy.runtime.engines import clear_cache, installed_engines, load_engine, pick_engine
from mnv2.errors import ConfigError
from mnv2.weights.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    clear_cache()


def test_engines_match_torch_and_are_cached(tiny_checkpoint):
    assert set(installed_engines()) == {"onnxruntime", "openvino", "litert", "torch"}
    x, _ = batches(40, seed=8, batch=40)[0]
    with torch.inference_mode():
        want = load_checkpoint(tiny_checkpoint)(torch.from_numpy(x)).numpy()
    for name in ("torch", "onnxruntime", "openvino", "litert"):
        eng = load_engine(tiny_checkpoint, engine=name, threads=1)
        assert eng.name == name and eng.precision == "fp32"
        assert np.abs(eng(x) - want).max() <= 1e-4, name
        assert load_engine(tiny_checkpoint, engine=name, threads=1) is eng  # warm cache
    lanes = load_engine(tiny_checkpoint, engine="litert", threads=2)  # batch >= 4: two single-thread lanes
    assert np.abs(lanes(x) - want).max() <= 1e-4 and len(lanes.lanes) == 2
    assert np.abs(lanes(x[:3]) - want[:3]).max() <= 1e-4  # a small batch: one 2-thread interpreter
    auto = load_engine(tiny_checkpoint, threads=1)
    assert auto.name == pick_engine("fp32") and auto.precision == "fp32"
    bf16 = load_engine(tiny_checkpoint, engine="openvino", precision="bf16", threads=1)
    assert (bf16(x).argmax(1) == want.argmax(1)).mean() >= 0.9  # not fp32-accurate, but close


def test_int8_engines_run_quantized_file(tiny_checkpoint, tmp_path):
    from mnv2.deploy.quantize import quantize

    q = tmp_path / "int8.onnx"
    quantize(tiny_checkpoint, q, batches(256, seed=3), held_out=batches(256, seed=7), method="percentile")
    x, y = batches(200, seed=7, batch=200)[0]
    accs = {}
    for name in ("onnxruntime", "openvino"):
        eng = load_engine(q, engine=name, threads=1)
        assert eng.precision == "int8"
        accs[name] = (eng(x).argmax(1) == y).mean()
    assert abs(accs["onnxruntime"] - accs["openvino"]) <= 0.03 and min(accs.values()) > 0.7
    with pytest.raises(ConfigError, match="INT8 model"):
        load_engine(q, precision="fp32")
    with pytest.raises(ConfigError, match="unknown engine"):
        load_engine(tiny_checkpoint, engine="tensorrt")


def test_bench_json_records(capsys):
    argv = ["bench", "--model", "mobilenetv2_035", "--resolution", "64", "--batch", "4", "--rounds", "1"]
    argv += ["--iters", "3", "--engines", "mnv2 onnxruntime", "plain", "--json"]
    assert main(argv) == 0
    records = json.loads(capsys.readouterr().out)
    keys = {(r["engine"], r["precision"], r["batch"]) for r in records}
    assert ("mnv2 onnxruntime", "int8", 4) in keys and ("onnxruntime (plain export)", "fp32", 1) in keys
    for r in records:
        assert {"engine", "peer", "precision", "batch", "median_ms", "images_per_s"} <= set(r)
        assert r["median_ms"] > 0 and r["images_per_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])
        assert r["peer"] == r["engine"].startswith("onnxruntime (plain")
