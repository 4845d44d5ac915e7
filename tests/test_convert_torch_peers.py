"""Parity with real torchvision / timm models through the state dicts and outputs they produced.

torchvision and timm do not import with this project's CPU torch, so scripts/make_interop_fixtures.py ran them in
another environment and saved their state dicts and eval outputs under tests/fixtures/interop/.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mnv2
from mnv2.data import IMAGENET_MEAN
from mnv2.weights.convert import ConvertError, convert, detect_format

FIXTURES = Path(__file__).parent / "fixtures" / "interop"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
LOGIT_ATOL = 1e-5  # the bound on logits


@pytest.fixture(scope="module")
def references():
    return load_file(str(FIXTURES / "reference.safetensors"))


@pytest.mark.parametrize("entry", MANIFEST["models"], ids=lambda e: e["name"])
def test_converted_logits_match_the_peer_library(entry, references, tmp_path):
    src = FIXTURES / entry["file"]
    fmt, _ = detect_format(src)
    assert fmt == {"tv": "torchvision", "timm": "timm"}[entry["library"]]
    convert(src, out=tmp_path / "m.safetensors")
    model = mnv2.load_checkpoint(tmp_path / "m.safetensors")  # through the checkpoint file, as users do
    assert model.config.width_mult == entry["width"] and model.config.num_classes == entry["classes"]
    assert model.config.padding == "torch" and model.config.bn_eps == 1e-5
    assert model.meta.preprocessing.mean == IMAGENET_MEAN
    assert model.meta.source["framework"] == fmt and len(model.meta.source["sha256"]) == 64
    for case in entry["inputs"]:  # even square and odd non-square inputs
        x, expected = references[f"{case['key']}/input"], references[f"{case['key']}/logits"]
        with torch.no_grad():
            got = model(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= LOGIT_ATOL, case["key"]


def test_preprocessing_follows_the_source(tmp_path):
    tv = convert(FIXTURES / "tv_w025_c10.pth")
    timm = convert(FIXTURES / "timm_050_c4.safetensors")
    assert (tv.meta.preprocessing.interpolation, tv.meta.preprocessing.crop_pct) == ("bilinear", 224 / 256)
    assert (timm.meta.preprocessing.interpolation, timm.meta.preprocessing.crop_pct) == ("bicubic", 0.875)


def test_training_checkpoint_wrappers_are_unwrapped(tmp_path):
    state = torch.load(FIXTURES / "tv_w030_c3.pth", weights_only=True)
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "train_ckpt.pth")
    a, b = convert(tmp_path / "train_ckpt.pth"), convert(FIXTURES / "tv_w030_c3.pth")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_tensors_that_do_not_fit_are_named_with_their_shapes(tmp_path):
    state = torch.load(FIXTURES / "timm_035_c10.pth", weights_only=True)
    extra = dict(state, **{"blocks.1.2.conv_pw.weight": torch.zeros(144, 24, 1, 1)})  # a 110d-style extra block
    torch.save(extra, tmp_path / "deeper.pth")
    with pytest.raises(ConvertError, match=r"blocks\.1\.2\.conv_pw\.weight \(144, 24, 1, 1\)"):
        convert(tmp_path / "deeper.pth")
    missing = {k: v for k, v in state.items() if not k.startswith("blocks.6.")}
    torch.save(missing, tmp_path / "short.pth")
    with pytest.raises(ConvertError, match=r"missing .*blocks\.6\.0\.conv_pw\.weight"):
        convert(tmp_path / "short.pth")
    wrong = dict(state, **{"blocks.3.1.conv_dw.weight": torch.zeros(120, 1, 5, 5)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ConvertError, match=r"blocks\.3\.1\.conv_dw\.weight \(120, 1, 5, 5\)"):
        convert(tmp_path / "wrong.pth")


def test_cli_convert_writes_a_checkpoint(tmp_path, capsys):
    from mnv2.cli import main

    out = tmp_path / "tv.safetensors"
    assert main(["convert", str(FIXTURES / "tv_w025_c10.pth"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["framework"] == "torchvision" and summary["width_mult"] == 0.25 and summary["num_classes"] == 10
    model = mnv2.load_checkpoint(out)
    assert model.meta.source["file"] == "tv_w025_c10.pth" and model.meta.class_names is None
    assert main(["models", "--pretrained"]) == 0
    assert "mobilenetv2_100.tv_in1k" in capsys.readouterr().out
