"""Published-weights registry: download with progress, integrity checks, one conversion reused, clear errors."""

import hashlib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

import mnv2
from mnv2.data.download import DownloadError
from mnv2.errors import ConfigError
from mnv2.weights import hub
from mnv2.weights.convert import ConvertError

FIXTURE = Path(__file__).parent / "fixtures" / "interop" / "timm_035_c10.pth"
URL = "https://example.invalid/weights/timm_035_c10.pth"


def serve(files, url, data):
    u = urlparse(url)
    files.routes[f"/{u.netloc}{u.path}"] = data


@pytest.fixture
def entry(monkeypatch):
    data = FIXTURE.read_bytes()
    e = hub.PretrainedWeights(
        "mobilenetv2_035",
        "test_timm",
        "timm",
        (hub.RemoteFile(URL, sha256=hashlib.sha256(data).hexdigest()),),
        160,
        10,
        {"top1": 12.5},
    )
    monkeypatch.setitem(hub._PRETRAINED, e.name, e)
    return e, data


def test_download_verify_convert_once_and_reuse(entry, http_server, tmp_path, capfd):
    e, data = entry
    base, files = http_server
    serve(files, URL, data)
    model = mnv2.create_model("mobilenetv2_035", weights="test_timm", cache_dir=tmp_path, mirror=base)
    assert "timm_035_c10.pth" in capfd.readouterr().err  # the tqdm progress bar
    assert len(files.requests) == 1 and not model.training
    assert model.meta.metrics == {"top1": 12.5} and model.meta.source["integrity"] == "sha256"
    assert model.meta.preprocessing.input_size == 160 and model.meta.source["pretrained"] == e.name
    reference = mnv2.weights.convert.convert(FIXTURE)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    converted = tmp_path / "converted" / f"{e.name}.safetensors"
    stamp = converted.stat().st_mtime_ns
    again = mnv2.create_model("mobilenetv2_035", weights="test_timm", cache_dir=tmp_path, mirror=base, num_classes=4)
    assert len(files.requests) == 1 and converted.stat().st_mtime_ns == stamp  # no download, no re-conversion
    assert again(x).shape == (1, 4)  # a fresh classifier for fine-tuning
    torch.testing.assert_close(again.forward_features(x), model.forward_features(x), rtol=0, atol=0)
    backbone = mnv2.create_model(
        "mobilenetv2_035", weights="test_timm", cache_dir=tmp_path, mirror=base, features_only=True, output_stride=16
    )
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [t.num_chs for t in backbone.feature_info] and feats[-1].shape[-1] == 4
    assert len(files.requests) == 1


def test_checksum_mismatch_and_truncated_downloads_are_errors(entry, http_server, tmp_path):
    _, data = entry
    base, files = http_server
    serve(files, URL, data[:-10] + b"0123456789")
    with pytest.raises(ConvertError, match="differs from the published"):
        mnv2.create_model("mobilenetv2_035", weights="test_timm", cache_dir=tmp_path, mirror=base, progress=False)
    assert not list((tmp_path / "downloads").rglob("*.pth"))
    serve(files, URL, data)
    files.short.add(f"/{urlparse(URL).netloc}{urlparse(URL).path}")
    with pytest.raises(DownloadError, match="cut short"):
        mnv2.create_model("mobilenetv2_035", weights="test_timm", cache_dir=tmp_path, mirror=base, progress=False)
    assert not list((tmp_path / "downloads").rglob("*.pth"))
    with pytest.raises(DownloadError, match=r"could not download .*mobilenetv2_140"):
        mnv2.create_model("mobilenetv2_140", weights="ra_in1k", cache_dir=tmp_path, mirror=base, progress=False)


def test_publisher_hash_prefix_is_checked(http_server, tmp_path):
    base, files = http_server
    entry = hub.get_pretrained("mobilenetv2_100.tv_in1k")
    assert entry.files[0].sha256 is None and entry.files[0].sha256_prefix == "b0353104"  # no invented checksum
    serve(files, entry.files[0].url, FIXTURE.read_bytes())  # not torchvision's file
    with pytest.raises(ConvertError, match="does not start with the publisher's b0353104"):
        mnv2.create_model("mobilenetv2_100", weights="tv_in1k", cache_dir=tmp_path, mirror=base, progress=False)


def test_registry_lists_every_published_set():
    names = mnv2.list_pretrained()
    keras = [n for n in names if ".keras_in1k_" in n]
    assert len(keras) == 44  # Keras' 22 (alpha, rows) combinations, with and without top
    assert {"mobilenetv2_100.tv_in1k", "mobilenetv2_100.tv2_in1k", "mobilenetv2_100.ra_in1k"} <= set(names)
    assert len([n for n in names if ".hf_in1k_" in n]) == 4
    assert hub.get_pretrained("mobilenetv2_100.tv2_in1k").metrics["top1"] == 72.154
    with pytest.raises(ConfigError, match=r"tags for mobilenetv2_050: .*lamb_in1k"):
        mnv2.create_model("mobilenetv2_050", weights="nope")
    with pytest.raises(ConfigError, match=r"architecture is fixed; cannot override \['padding'\]"):
        mnv2.create_model("mobilenetv2_050", weights="lamb_in1k", padding="tf")
