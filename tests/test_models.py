import math

import pytest
import torch
from torch import nn

import mnv2
from mnv2.bench.profile import summarize
from mnv2.errors import ConfigError
from mnv2.models import TABLE2, block_plan

# TF-slim README table (tensorflow/models research/slim/nets/mobilenet/README.md).
# width, resolution, MACs (M), Params (M)
SLIM_TABLE = [
    (1.4, 224, 582, 6.06), (1.3, 224, 509, 5.34),
    (1.0, 224, 300, 3.47), (1.0, 192, 221, 3.47), (1.0, 160, 154, 3.47), (1.0, 128, 99, 3.47), (1.0, 96, 56, 3.47),
    (0.75, 224, 209, 2.61), (0.75, 192, 153, 2.61), (0.75, 160, 107, 2.61), (0.75, 128, 69, 2.61), (0.75, 96, 39, 2.61),
    (0.5, 224, 97, 1.95), (0.5, 192, 71, 1.95), (0.5, 160, 50, 1.95), (0.5, 128, 32, 1.95), (0.5, 96, 18, 1.95),
    (0.35, 224, 59, 1.66), (0.35, 192, 43, 1.66), (0.35, 160, 30, 1.66), (0.35, 128, 20, 1.66), (0.35, 96, 11, 1.66),
]  # fmt: skip
WIDTH_TO_NAME = {0.35: "mobilenetv2_035", 0.5: "mobilenetv2_050", 0.75: "mobilenetv2_075", 1.0: "mobilenetv2_100",
                 1.3: "mobilenetv2_130", 1.4: "mobilenetv2_140"}  # fmt: skip


def test_all_22_published_combos_match_tf_slim():
    assert len(SLIM_TABLE) == 22
    for width, res, macs_m, params_m in SLIM_TABLE:
        s = summarize(mnv2.create_model(WIDTH_TO_NAME[width], num_classes=1001), res)
        assert round(s.params_no_bn / 1e6, 2) == params_m, (width, res, s.params_no_bn)
        # the README truncates or rounds MACs to the million: accept either
        assert macs_m in (math.floor(s.madds / 1e6), round(s.madds / 1e6)), (width, res, s.madds)
        assert res in mnv2.model_info(WIDTH_TO_NAME[width]).resolutions


def test_reference_counts_1000_classes():
    s = summarize(mnv2.create_model("mobilenetv2_100"), 224)
    assert s.params == 3_504_872  # torchvision MobileNet_V2_Weights num_params
    assert s.madds == 300_774_272
    assert sum(r.params for r in s.layers) == s.params  # every parameter sits in a counted layer


def test_structure_follows_table2():
    model = mnv2.create_model("mobilenetv2_100")
    blocks = [b for stage in model.blocks for b in stage]
    assert len(blocks) == sum(n for _, _, n, _ in TABLE2) == 17
    assert blocks[0].expand is None  # t = 1: no expansion conv
    assert all(b.expand is not None for b in blocks[1:])
    assert sum(b.use_residual for b in blocks) == 10
    assert all(isinstance(b.project.act, nn.Identity) for b in blocks)  # linear bottleneck
    assert all(isinstance(b.dw.act, nn.ReLU6) and b.dw.conv.groups == b.dw.conv.in_channels for b in blocks)
    assert [stage[-1].project.conv.out_channels for stage in model.blocks] == [c for _, c, _, _ in TABLE2]
    assert model.stem.conv.stride == (2, 2) and model.stem.conv.out_channels == 32
    assert model.head.conv.out_channels == 1280
    keys = set(model.state_dict())
    assert {"stem.conv.weight", "blocks.1.0.expand.conv.weight", "blocks.0.0.dw.bn.running_mean",
            "blocks.6.0.project.bn.weight", "head.conv.weight", "classifier.weight"} <= keys  # fmt: skip


@pytest.mark.parametrize(
    ("width", "stem", "head"), [(0.35, 16, 1280), (0.75, 24, 1280), (1.0, 32, 1280), (1.3, 40, 1664), (1.4, 48, 1792)]
)
def test_width_rules(width, stem, head):
    cfg = mnv2.MobileNetV2Config(width_mult=width)
    assert (cfg.stem_channels, cfg.head_channels) == (stem, head)


def test_init_matches_torchvision():
    model = mnv2.create_model("mobilenetv2_100")
    assert torch.all(model.stem.bn.weight == 1) and torch.all(model.stem.bn.bias == 0)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(model.classifier.bias == 0)
    w = model.head.conv.weight  # kaiming normal, fan_out = 1280 * 1 * 1
    assert w.std().item() == pytest.approx(math.sqrt(2 / 1280), rel=0.05)


@pytest.mark.parametrize("name", mnv2.list_models())
@pytest.mark.parametrize("resolution", [32, 67])
def test_forward_backward_every_model(name, resolution):
    model = mnv2.create_model(name, num_classes=7)
    x = torch.randn(2, 3, resolution, resolution, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("padding", ["torch", "tf"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [64, 97])
def test_features_only_shapes_and_strides(padding, output_stride, size):
    all_taps = tuple(range(len(mnv2.mobilenet_v2().feature_info)))
    model = mnv2.create_model(
        "mobilenetv2_050", features_only=True, out_indices=all_taps, output_stride=output_stride, padding=padding
    ).eval()
    feats = model(torch.randn(1, 3, size, size))
    assert len(feats) == len(model.feature_info) == 12
    for info, f in zip(model.feature_info, feats):
        assert info.reduction <= output_stride
        assert f.shape[1] == info.num_chs, info
        assert f.shape[-1] == f.shape[-2] == math.ceil(size / info.reduction), info
    by_name = {i.name: i for i in model.feature_info}
    assert by_name["stage5.expansion"].num_chs == 288  # 0.5 width: 48 * 6; 576 at width 1.0 (SSDLite's tap)
    assert by_name["stage5.expansion"].reduction == min(16, output_stride)


def test_ssdlite_tap_and_default_indices():
    model = mnv2.create_model("mobilenetv2_100", features_only=True)
    assert [(i.name, i.reduction) for i in model.feature_info] == [
        ("stage0", 2), ("stage1", 4), ("stage2", 8), ("stage4", 16), ("stage6", 32)]  # fmt: skip
    taps = {i.name: i for i in mnv2.mobilenet_v2().feature_info}
    assert (taps["stage5.expansion"].num_chs, taps["stage5.expansion"].reduction) == (576, 16)
    assert taps["stage5.expansion"].module == "blocks.5.0.expand"  # TF-slim layer_15/expansion_output
    assert "classifier.weight" not in model.state_dict() and "head.conv.weight" not in model.state_dict()


def test_features_equal_classifier_internals():
    model = mnv2.create_model("mobilenetv2_035", output_stride=16).eval()
    feats = mnv2.create_model("mobilenetv2_035", features_only=True, out_indices=(-1,), output_stride=16).eval()
    feats.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(feats(x)[0], model.forward_features(x))


def test_output_stride_dilation_follows_slim():
    plan = block_plan(mnv2.MobileNetV2Config(output_stride=8))
    assert [(b.stride, b.dilation) for b in plan if b.index == 0] == [
        (1, 1),
        (2, 1),
        (2, 1),
        (1, 1),
        (1, 2),
        (1, 2),
        (1, 4),
    ]
    assert max(b.out_reduction for b in plan) == 8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"width_mult": 0}, "width multiplier .* 0"), ({"width_mult": -1.0}, "-1.0"), ({"padding": "same"}, "'same'"),
     ({"output_stride": 4}, "output_stride .* 4"), ({"num_classes": -3}, "-3"), ({"bogus": 1}, "bogus")],
)  # fmt: skip
def test_bad_arguments_raise_one_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        mnv2.mobilenet_v2(**kwargs)


def test_bad_name_and_resolution():
    with pytest.raises(ConfigError, match="'mobilenetv3'"):
        mnv2.create_model("mobilenetv3")
    with pytest.raises(ConfigError, match="31x31"):
        mnv2.create_model("mobilenetv2_100")(torch.randn(1, 3, 31, 31))


@pytest.mark.parametrize("width", [0.1, 0.6, 1.1, 2.0])
def test_any_width_builds(width):
    s = summarize(mnv2.mobilenet_v2(width_mult=width), 32)
    assert s.params > 0 and s.madds > 0
