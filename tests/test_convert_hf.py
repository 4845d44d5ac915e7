"""Parity with Hugging Face transformers' MobileNetV2 (real library, random init, saved directories)."""

import json

import pytest
import torch
from transformers import MobileNetV2Config as HFConfig
from transformers import MobileNetV2ForImageClassification, MobileNetV2Model

import mnv2
from mnv2.data import TF_MEAN
from mnv2.models.layers import BN_MOMENTUM_TF_SLIM
from mnv2.weights.convert import ConvertError, convert

LOGIT_ATOL = 1e-5


def calibrate(model: torch.nn.Module, resolution: int, seed: int = 0) -> None:
    """Non-trivial, well-scaled BN statistics: measured on random batches, then perturbed (and unit-gain head)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.reset_running_stats()
            m.momentum = None
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
        model.train()
        model(torch.randn(8, 3, resolution, resolution, generator=g))
        for m in bns:
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.7 + 0.7).add_(0.05)
    model.eval()


CASES = [
    # tf_padding, depth_multiplier, classes (0 = MobileNetV2Model), input (H, W)
    (True, 0.35, 7, (96, 96)),
    (True, 0.75, 3, (75, 83)),
    (True, 1.4, 0, (65, 64)),
    (False, 0.5, 5, (96, 96)),
    (False, 1.0, 0, (81, 97)),
]


@pytest.mark.parametrize(("tf_padding", "dm", "classes", "hw"), CASES)
def test_converted_outputs_match_transformers(tf_padding, dm, classes, hw, tmp_path):
    hf_config = HFConfig(depth_multiplier=dm, tf_padding=tf_padding, num_labels=max(classes, 1), image_size=hw[0])
    hf = (MobileNetV2ForImageClassification if classes else MobileNetV2Model)(hf_config)
    calibrate(hf, 64)
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", out=tmp_path / "m.safetensors")
    model = mnv2.load_checkpoint(tmp_path / "m.safetensors")
    c = model.config
    assert (c.width_mult, c.num_classes, c.padding) == (dm, classes, "tf" if tf_padding else "torch")
    assert c.bn_eps == 1e-3 and c.bn_momentum == BN_MOMENTUM_TF_SLIM  # not HF's 0.997 (a decay)
    assert model.meta.preprocessing.mean == TF_MEAN
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        if classes:
            expected, got = hf(x).logits, model(x)
            assert c.dropout == pytest.approx(0.2)  # HF's 0.8 is TF-slim's keep probability
        else:  # MobileNetV2Model: the last 1x1 conv's feature map and the pooled features
            out = hf(x)
            torch.testing.assert_close(model.forward_features(x), out.last_hidden_state, rtol=0, atol=LOGIT_ATOL)
            expected, got = out.pooler_output.flatten(1), model(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= LOGIT_ATOL


def test_output_stride_16_matches(tmp_path):
    hf = MobileNetV2Model(HFConfig(depth_multiplier=0.5, output_stride=16))
    calibrate(hf, 64)
    hf.save_pretrained(tmp_path)
    model = convert(tmp_path)
    assert model.config.output_stride == 16
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = hf(x).last_hidden_state
        got = model.forward_features(x)
    assert got.shape == expected.shape == (1, 1280, 6, 6)
    assert (got - expected).abs().max().item() <= LOGIT_ATOL


def test_labels_and_image_processor_settings_are_kept(tmp_path):
    hf = MobileNetV2ForImageClassification(
        HFConfig(depth_multiplier=0.35, num_labels=3, id2label={0: "cat", 1: "dog", 2: "emu"})
    )
    hf.save_pretrained(tmp_path)
    processor = {
        "crop_size": {"height": 160, "width": 160},
        "size": {"shortest_edge": 192},
        "resample": 3,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_center_crop": True,
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_resize": True,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    meta = convert(tmp_path).meta
    assert meta.class_names == ["cat", "dog", "emu"]
    p = meta.preprocessing
    assert (p.input_size, p.crop_pct, p.interpolation, p.mean) == (160, 160 / 192, "bicubic", TF_MEAN)
    assert meta.source["hf_classifier_dropout_prob"] == 0.8 and meta.source["tf_padding"] is True


def test_variants_outside_table_2_are_reported(tmp_path):
    MobileNetV2Model(HFConfig(depth_multiplier=0.5, first_layer_is_expansion=False)).save_pretrained(tmp_path / "a")
    with pytest.raises(ConvertError, match=r"first_layer_is_expansion=False .*\(16, 16, 1, 1\)"):
        convert(tmp_path / "a")
    MobileNetV2Model(HFConfig(depth_multiplier=0.5, finegrained_output=False)).save_pretrained(tmp_path / "b")
    with pytest.raises(ConvertError, match=r"finegrained_output=False .*\(640, 160, 1, 1\)"):
        convert(tmp_path / "b")
    weights = tmp_path / "b" / "model.safetensors"
    with pytest.raises(ConvertError, match=r"convert the directory with its config\.json"):
        convert(weights)


def test_pytorch_model_bin_directories_load_through_weights_only(tmp_path):
    """Older hub repos ship pytorch_model.bin (a pickle): read with torch.load(weights_only=True)."""
    hf = MobileNetV2ForImageClassification(HFConfig(depth_multiplier=0.35, num_labels=1001, tf_padding=True))
    calibrate(hf, 64)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = convert(tmp_path)
    assert model.meta.source["weights_file"] == "pytorch_model.bin"
    assert model.meta.class_names[0] == "background" and len(model.meta.class_names) == 1001  # TF-slim's 1001
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= LOGIT_ATOL
