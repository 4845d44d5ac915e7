"""§5.1 memory-efficient inference: parity with the dense model, and the memory it saves, measured."""

import json

import pytest
import torch

import mnv2
from mnv2.bench.memory import measure_peak, memory_report
from mnv2.bench.memory_bench import dense_peak, streamed_peak
from mnv2.cli import main
from mnv2.errors import ConfigError


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding them is really exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return model.eval()


def max_diff(a, b) -> float:
    if isinstance(a, list):
        assert len(a) == len(b)
        return max(max_diff(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# (resolution, padding, batch, output_stride, splits): odd and even sizes, both paddings, batch 1 and 8, all strides
CASES = [(33, "tf", 8, 32, 3), (64, "torch", 1, 16, 5), (47, "torch", 8, 8, 2), (40, "tf", 1, 8, 6)]


@pytest.mark.parametrize("name", mnv2.list_models())
@pytest.mark.parametrize(("resolution", "padding", "batch", "output_stride", "splits"), CASES)
def test_streamed_logits_equal_dense(name, resolution, padding, batch, output_stride, splits):
    model = randomize_bn(mnv2.create_model(name, padding=padding, output_stride=output_stride))
    x = torch.randn(batch, 3, resolution, resolution)
    with torch.no_grad():
        ref, ref_map = model(x), model.forward_features(x)
    lean = mnv2.streaming(model, splits)
    assert max_diff(lean(x), ref) <= 1e-5
    assert max_diff(lean.forward_features(x), ref_map) <= 1e-5


@pytest.mark.parametrize(("name", "padding", "batch"), [("mobilenetv2_035", "tf", 2), ("mobilenetv2_100", "torch", 1)])
def test_one_channel_slices_equal_dense(name, padding, batch):
    """splits="full": the paper's n = t limit, one inner channel at a time (depthwise without oneDNN)."""
    model = randomize_bn(mnv2.create_model(name, padding=padding))
    x = torch.randn(batch, 3, 35, 36)
    with torch.no_grad():
        ref = model(x)
    assert max_diff(mnv2.streaming(model, "full")(x), ref) <= 1e-5


@pytest.mark.parametrize(("padding", "output_stride"), [("tf", 16), ("torch", 32)])
def test_streamed_features_only_with_expansion_and_head_taps(padding, output_stride):
    every = tuple(range(len(mnv2.create_model("mobilenetv2_075", features_only=True).all_feature_info)))
    model = mnv2.create_model("mobilenetv2_075", features_only=True, padding=padding, output_stride=output_stride,
                              out_indices=every)  # fmt: skip
    model = randomize_bn(model)
    assert {t.kind for t in model.feature_info} == {"stage", "expansion", "head"}
    x = torch.randn(2, 3, 65, 64)
    with torch.no_grad():
        ref = model(x)
    got = mnv2.streaming(model, 4)(x)
    assert [t.shape for t in got] == [t.shape for t in ref]
    assert max_diff(got, ref) <= 1e-5


def test_weights_are_shared_not_copied_and_softmax_output():
    model = randomize_bn(mnv2.mobilenet_v2(width_mult=0.5, num_classes=7, output="softmax"))
    lean = mnv2.streaming(model, 2)
    assert lean.model is model and sum(p.numel() for p in lean.parameters()) == sum(
        p.numel() for p in model.parameters()
    )
    x = torch.randn(2, 3, 64, 64)
    before = lean(x)
    with torch.no_grad():
        model.classifier.bias[0] += 2.0  # the wrapper sees changes to the model: same parameters
        model.blocks[3][1].project.bn.running_mean.add_(0.3)
        ref = model(x)
    after = lean(x)
    assert max_diff(after, ref) <= 1e-5 and max_diff(after, before) > 1e-3
    assert torch.allclose(after.sum(-1), torch.ones(2))


def test_splits_validation():
    model = mnv2.mobilenet_v2(width_mult=0.35)
    for bad in (0, -1, "half", 2.5, True):
        with pytest.raises(ConfigError, match="splits"):
            mnv2.streaming(model, bad)
    with pytest.raises(ConfigError, match="Linear"):
        mnv2.streaming(torch.nn.Linear(2, 2))


def test_measure_peak_sees_every_allocation():
    def fn():
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(500, 1000)  # + 2 MB
        del a
        c = torch.empty(1500, 1000)  # 2 + 6 MB: the peak
        return b, c

    assert measure_peak(fn).peak_bytes == 8_000_000


def test_table3_column_and_analytic_bound_at_224():
    model = mnv2.create_model("mobilenetv2_100")
    report = memory_report(model, 224, "full")
    table = {t["size"]: (t["channels"], t["bytes"]) for t in report.table3()}
    # Table 3 (P-v4), MobileNetV2, 16-bit: 112x112 16/400, 7x7 320/32, 1x1 1280/2, max 400K
    assert table[(112, 112)] == (16, 401_408) and table[(7, 7)][0] == 320 and table[(1, 1)][0] == 1280
    assert round(max(b for _, b in table.values()) / 1000, -2) == 400
    assert round(table[(7, 7)][1] / 1000) == 31 and round(table[(1, 1)][1] / 1000) == 3
    # dense: block 1.0's depthwise holds the 96x112x112 expansion and its 96x56x56 output
    assert report.dense_max == 96 * 112 * 112 + 96 * 56 * 56
    # streamed, one channel per slice: image + 16x112x112 + one stem and one depthwise channel
    assert report.streamed_max == 3 * 224 * 224 + 16 * 112 * 112 + 2 * 112 * 112
    assert memory_report(model, 224, 1).streamed_max > memory_report(model, 224, 4).streamed_max > report.streamed_max


def test_measured_streamed_peak_far_below_dense_at_224():
    """The allocator's peak, not a formula: §5.1 streaming of MobileNetV2 1.0 @224, batch 1."""
    model = mnv2.create_model("mobilenetv2_100").eval()
    dense = dense_peak(model, 1, 224)
    for splits in (4, 6):
        report = memory_report(model, 224, splits)
        peak = streamed_peak(model, splits, 1, 224)
        held = report.bound_bytes(held_input=True)
        # the tensors of the worst op must coexist: the measurement cannot undercut the bound...
        assert peak >= 0.99 * held, (splits, peak, held)
        # ...and nothing else of size is allocated (no copies, reorders or output-sized temporaries)
        assert peak <= 1.05 * held, (splits, peak, held)
    assert dense / peak >= 3.5, (dense, peak)  # t = 6: measured ~4.1x (and ~6.2x with splits="full")


def test_cli_summary_memory_json(capsys):
    assert main(["summary", "--memory", "--width", "1.0", "--resolution", "224", "--json", "--splits", "4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["splits"] == 4 and d["dense_max"] == 1_505_280
    assert d["bytes"]["fp16"]["dense"] == 2 * d["dense_max"] and d["bytes"]["int8"]["streamed"] == d["streamed_max"]
    assert [r["name"] for r in d["rows"]][:2] == ["stem", "blocks.0.0"] and len(d["rows"]) == 20
    assert main(["summary", "--memory"]) == 0
    table = capsys.readouterr().out
    assert "112x112:    16 channels,    401 kB" in table and "blocks.16" not in table
    assert main(["summary", "--memory", "--splits", "0"]) == 2


def test_cli_bench_memory_json(capsys):
    args = ["bench", "--memory", "--width", "0.35", "--resolution", "64", "--json", "--repeats", "1"]
    assert main([*args, "--splits", "2", "4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["splits"] in (2, 4) and {c["splits"] for c in d["candidates"]} == {2, 4}
    assert d["streamed_peak_bytes"] < d["dense_peak_bytes"]
    assert d["bound_bytes"] <= d["bound_held_input_bytes"]
    assert main(["bench", "--width", "0.35"]) == 2
    assert "--memory" in capsys.readouterr().err
