import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import mnv2
from mnv2.data import TF_MEAN, TF_STD
from mnv2.weights.checkpoint import CheckpointError, CheckpointMeta, read_checkpoint_meta


def test_roundtrip_rebuilds_model_from_file_alone(tmp_path):
    model = mnv2.mobilenet_v2(width_mult=0.35, num_classes=3, padding="tf", bn_eps=1e-3).eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BN statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    meta = CheckpointMeta(
        model.config, mnv2.Preprocessing(input_size=96, mean=TF_MEAN, std=TF_STD), class_names=["a", "b", "c"]
    )
    path = mnv2.save_checkpoint(tmp_path / "m.safetensors", torch.compile(model), meta)  # wrapper is unwrapped
    loaded = mnv2.load_checkpoint(path)
    assert not loaded.training
    assert loaded.meta.class_names == ["a", "b", "c"] and loaded.meta.package_version == mnv2.__version__
    assert loaded.config == model.config and loaded.meta.preprocessing.input_size == 96
    x = torch.randn(2, 3, 97, 96)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert read_checkpoint_meta(path).model_config.padding == "tf"


def test_bad_files_give_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        mnv2.load_checkpoint(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable"):
        mnv2.load_checkpoint(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(CheckpointError, match="without mnv2 metadata"):
        mnv2.load_checkpoint(bare)
    good = mnv2.save_checkpoint(
        tmp_path / "g.safetensors",
        mnv2.mobilenet_v2(width_mult=0.35),
        CheckpointMeta(mnv2.MobileNetV2Config(width_mult=0.35)),
    )
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        mnv2.load_checkpoint(cut)


def test_architecture_mismatch_is_named(tmp_path):
    path = mnv2.save_checkpoint(
        tmp_path / "m.safetensors",
        mnv2.mobilenet_v2(width_mult=0.5),
        CheckpointMeta(mnv2.MobileNetV2Config(width_mult=0.5)),
    )
    model = mnv2.mobilenet_v2(width_mult=0.35)
    from safetensors.torch import load_file

    from mnv2.weights.checkpoint import load_state_dict_checked

    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch: blocks\.1\.0\.project\.conv\.weight: \(16, 48, 1, 1\) vs model \(8, 48, 1, 1\)",
    ):
        load_state_dict_checked(model, load_file(str(path)), source=str(path))


def test_half_storage_halves_the_file_and_loads_back_as_fp32(tmp_path):
    """Example models ship with fp16 conv/linear weights (issue 15/16: <= 10 MB); loading restores fp32."""
    torch.manual_seed(0)
    model = mnv2.MobileNetV2(mnv2.MobileNetV2Config(width_mult=0.5, num_classes=10)).eval()
    meta = CheckpointMeta(model.config)
    full = mnv2.save_checkpoint(tmp_path / "full.safetensors", model, meta)
    half = mnv2.save_checkpoint(tmp_path / "half.safetensors", model, meta, half=True)
    assert half.stat().st_size < 0.56 * full.stat().st_size
    with safe_open(str(half), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    floats = [t for t in stored.values() if t.is_floating_point()]
    assert all(t.dtype == (torch.float16 if t.dim() >= 2 else torch.float32) for t in floats)
    loaded = mnv2.load_checkpoint(half)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), atol=2e-2, rtol=0)
