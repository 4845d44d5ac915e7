"""Data: Fashion-MNIST lookup/download (against a local HTTP server), IDX parsing, folders and their errors."""

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnv2.cli import main
from mnv2.data import fashion_mnist
from mnv2.data.download import DownloadError, download
from mnv2.data.fashion_mnist import DatasetError, read_idx
from mnv2.data.folder import folder_splits
from mnv2.data.images import eval_image, load_image
from mnv2.data.preprocessing import Preprocessing
from mnv2.data.transforms import AugmentConfig, BatchAugment


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">i4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


@pytest.fixture
def http_dir(tmp_path):
    """A directory served over HTTP on 127.0.0.1 (stands in for the official Fashion-MNIST URLs)."""
    root = tmp_path / "srv"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_idx_verifies_content_and_caches(http_dir, tmp_path):
    root, url = http_dir
    raw = idx_bytes(np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    expected = {"t10k-images-idx3-ubyte": hashlib.sha256(raw).hexdigest()}
    out = fashion_mnist._download_idx("t10k-images-idx3-ubyte", tmp_path / "cache", url, expected)
    assert out.read_bytes() == raw and read_idx(out).shape == (2, 28, 28)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["t10k-images-idx3-ubyte"]  # no partials
    with pytest.raises(DatasetError, match="sha256"):
        fashion_mnist._download_idx(
            "t10k-images-idx3-ubyte", tmp_path / "c2", url, {"t10k-images-idx3-ubyte": "0" * 64}
        )
    assert not (tmp_path / "c2" / "t10k-images-idx3-ubyte").exists()
    with pytest.raises(DownloadError, match="could not download"):
        download(url + "missing.gz", tmp_path / "c3" / "x")
    with pytest.raises(DownloadError, match="does not match"):
        download(url + "t10k-images-idx3-ubyte.gz", tmp_path / "c3" / "x", sha256="0" * 64)
    assert not list((tmp_path / "c3").iterdir())


def test_fashion_mnist_from_a_data_path_and_truncated_files(tmp_path):
    for split, (img, lbl) in fashion_mnist.SPLITS.items():
        n = 3 if split == "train" else 2
        (tmp_path / img).write_bytes(idx_bytes(np.full((n, 28, 28), 7)))
        (tmp_path / f"{lbl}.gz").write_bytes(gzip.compress(idx_bytes(np.arange(n))))
    x, y = fashion_mnist.load_fashion_mnist("train", tmp_path)
    assert x.shape == (3, 28, 28) and x.dtype == torch.uint8 and y.tolist() == [0, 1, 2]
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.full((2, 28, 28), 7))[:-5])
    with pytest.raises(DatasetError, match="truncated"):
        fashion_mnist.load_fashion_mnist("test", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        fashion_mnist.load_fashion_mnist("test", tmp_path / "nowhere")


def test_real_fashion_mnist_is_found_and_matches_recorded_checksums():
    paths = fashion_mnist.locate(allow_download=False)
    for name, path in paths.items():
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert hashlib.sha256(raw).hexdigest() == fashion_mnist.IDX_SHA256[name]
    x, y = fashion_mnist.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and torch.bincount(y).tolist() == [1000] * 10


def test_batch_augment_shapes_and_eval_is_deterministic():
    pre = Preprocessing(input_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3, grayscale=True)
    x = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8)
    ev = BatchAugment(pre, None)(x)
    assert ev.shape == (16, 3, 32, 32) and ev.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ev[:, 0], (x[:, 0].float() / 255 - 0.5) / 0.25)
    tr = BatchAugment(pre, AugmentConfig(crop_padding=4, random_erasing=1.0))
    torch.manual_seed(0)
    a = tr(x)
    torch.manual_seed(0)
    assert torch.equal(a, tr(x)) and not torch.equal(a, ev)


def test_grayscale_file_is_expanded_and_eval_crop(tmp_path):
    Image.fromarray(np.full((28, 40), 200, np.uint8), mode="L").save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    assert im.mode == "RGB"
    x = eval_image(im, Preprocessing(input_size=32, crop_pct=0.875, mean=(0, 0, 0), std=(1, 1, 1)))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.allclose(x, 200 / 255, atol=1e-6)


def test_eval_image_samples_as_resizing_the_whole_photo_then_cropping():
    # eval_image resizes only the crop's source box; the reference resizes the whole photo, then crops the centre
    pre = Preprocessing(input_size=224)  # ImageNet mean/std, crop 0.875: resize the short side to 256
    photos = sorted((Path(__file__).parent / "fixtures" / "detection" / "raccoon" / "images").glob("*.jpg"))[:3]
    for path in photos:
        im = load_image(path)
        w, h = im.size
        size = (max(224, round(w * 256 / min(w, h))), max(224, round(h * 256 / min(w, h))))
        left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
        ref = np.asarray(im.resize(size, Image.Resampling.BILINEAR).crop((left, top, left + 224, top + 224)))
        got = eval_image(im, pre).transpose(1, 2, 0) * np.asarray(pre.std) + np.asarray(pre.mean)
        diff = np.abs(got * 255 - ref)
        assert diff.max() < 1.01 and (diff < 0.01).mean() > 0.75, path.name  # rounding: one grey level at most


def test_folder_errors_are_clear(tmp_path, image_folder):
    # corrupt / truncated images and a non-image file: skipped and counted, or an error with strict
    png = (image_folder / "train" / "red" / "0.png").read_bytes()
    (image_folder / "train" / "red" / "trunc.png").write_bytes(png[: len(png) // 2])
    (image_folder / "train" / "red" / "junk.jpg").write_bytes(b"garbage")
    (image_folder / "train" / "red" / "notes.txt").write_text("hi")
    classes, train, val, val_name, report = folder_splits(image_folder)
    assert classes == ["blue", "green", "red"] and len(train) == 30 and len(val) == 12 and val_name == "val"
    assert len(report.corrupt) == 2 and len(report.non_image) == 1
    assert "skipped 2 corrupt image(s)" in report.message()
    with pytest.raises(DatasetError, match="--strict"):
        folder_splits(image_folder, strict=True)
    # mismatched class sets
    (image_folder / "val" / "yellow").mkdir()
    Image.new("RGB", (8, 8)).save(image_folder / "val" / "yellow" / "a.png")
    with pytest.raises(DatasetError, match=r"only in val: \['yellow'\]"):
        folder_splits(image_folder)
    # an empty class folder
    (image_folder / "train" / "yellow").mkdir()
    with pytest.raises(DatasetError, match=r"no readable images.*yellow"):
        folder_splits(image_folder)


def test_single_folder_seeded_split(tmp_path):
    from conftest import make_image_folder

    make_image_folder(tmp_path / "all", n=10)
    a = folder_splits(tmp_path / "all", val_split=0.2, seed=1)
    b = folder_splits(tmp_path / "all", val_split=0.2, seed=1)
    c = folder_splits(tmp_path / "all", val_split=0.2, seed=2)
    assert a[2] == b[2] != c[2] and len(a[2]) == 6 and len(a[1]) == 24
    assert sorted({s[1] for s in a[2]}) == [0, 1, 2]


def test_cli_missing_data_path_is_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_image_train_transform_with_every_option(tmp_path):
    from mnv2.data.transforms import ImageTrainTransform

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)).save(tmp_path / "a.jpg")
    pre = Preprocessing(input_size=32)
    aug = AugmentConfig(scale=(0.2, 1.0), color_jitter=0.4, randaugment_n=2, randaugment_m=9, random_erasing=1.0)
    torch.manual_seed(0)
    x = ImageTrainTransform(pre, aug)(load_image(tmp_path / "a.jpg"))
    assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
    assert (x == 0).any()  # the erased rectangle (filled with 0 after normalisation)
