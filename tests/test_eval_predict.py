"""mnv2 eval / predict: numbers equal a hand computation; bad input gives one clear message."""

import json

import pytest
import torch
from PIL import Image

from mnv2 import CheckpointMeta, Preprocessing, load_checkpoint, mobilenet_v2, save_checkpoint
from mnv2.cli import main
from mnv2.data.images import eval_image, load_image
from mnv2.deploy.runtime.predict import predict
from mnv2.engine.evaluate import evaluate_checkpoint
from mnv2.errors import ConfigError

CLASSES = ["blue", "green", "red"]


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(3)
    model = mobilenet_v2(width_mult=0.35, num_classes=3, dropout=0.0)
    # BN statistics of real activations and non-zero BN scales (init zeroes some): with arbitrary statistics each
    # block damps the input's share of its output and every image scores the same
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batch
            m.weight.data.uniform_(0.5, 1.5)
    with torch.no_grad():
        model.train()(torch.randn(32, 3, 32, 32))
    model.eval()
    pre = Preprocessing(input_size=32, crop_pct=0.875)
    return save_checkpoint(tmp_path / "m.safetensors", model, CheckpointMeta(model.config, pre, CLASSES))


def test_eval_matches_hand_computation(checkpoint, image_folder):
    r = evaluate_checkpoint(checkpoint, str(image_folder))
    model = load_checkpoint(checkpoint)
    correct = top2 = n = 0
    per_class = {c: [0, 0] for c in CLASSES}
    for label, c in enumerate(CLASSES):
        for f in sorted((image_folder / "val" / c).iterdir()):
            x = torch.from_numpy(eval_image(load_image(f), model.meta.preprocessing))[None]
            logits = model(x)[0]
            correct += int(logits.argmax() == label)
            top2 += int(label in logits.topk(2).indices)
            per_class[c][0] += int(logits.argmax() == label)
            per_class[c][1] += 1
            n += 1
    assert r["n"] == n == 12
    assert r["top1"] == pytest.approx(100 * correct / n)
    assert r["top5"] == 100.0  # 3 classes: top-5 covers all
    assert r["per_class"] == pytest.approx({c: 100 * a / b for c, (a, b) in per_class.items()})
    assert r["skipped"] == {"corrupt": 0, "non_image": 0}
    assert Image.open(r["confusion_png"]).size[0] > 100


def test_eval_flip_tta_matches_hand_computation(checkpoint, image_folder, capsys):
    model = load_checkpoint(checkpoint)
    r = evaluate_checkpoint(checkpoint, str(image_folder), tta="flip")
    single = evaluate_checkpoint(checkpoint, str(image_folder))
    correct, nll = 0, []
    for label, c in enumerate(CLASSES):
        for f in sorted((image_folder / "val" / c).iterdir()):
            x = torch.from_numpy(eval_image(load_image(f), model.meta.preprocessing))[None]
            p = (model(x).softmax(1) + model(torch.flip(x, dims=[3])).softmax(1))[0] / 2  # dim 3: width
            correct += int(p.argmax() == label)
            nll.append(-p[label].log().item())
    assert r["tta"] == "flip" and r["n"] == 12
    assert r["top1"] == pytest.approx(100 * correct / 12)
    assert r["loss"] == pytest.approx(sum(nll) / 12, rel=1e-4)
    assert abs(r["loss"] - single["loss"]) > 1e-3  # the mirror images really were scored
    assert main(["eval", str(checkpoint), "--data", str(image_folder), "--tta", "flip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == r["top1"]


def test_eval_flip_tta_warns_for_a_model_trained_without_flips(tmp_path, image_folder):
    model = mobilenet_v2(width_mult=0.35, num_classes=3)
    meta = CheckpointMeta(model.config, Preprocessing(input_size=32), CLASSES, config={"augment": {"hflip": 0.0}})
    path = save_checkpoint(tmp_path / "noflip.safetensors", model, meta)
    with pytest.warns(UserWarning, match="not trained with horizontal flips"):
        evaluate_checkpoint(path, str(image_folder), tta="flip")
    with pytest.raises(ConfigError, match="unknown test-time augmentation"):
        evaluate_checkpoint(path, str(image_folder), tta="crops")


def test_eval_cli_json_and_class_mismatch(checkpoint, image_folder, tmp_path, capsys):
    assert main(["eval", str(checkpoint), "--data", str(image_folder), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"top1", "top5", "n", "per_class"} <= r.keys() and r["n"] == 12
    (image_folder / "val" / "purple").mkdir()
    Image.new("RGB", (40, 40)).save(image_folder / "val" / "purple" / "a.png")
    assert main(["eval", str(checkpoint), "--data", str(image_folder)]) == 2
    assert "differ from the data" in capsys.readouterr().err


def test_predict_returns_names_and_probabilities(checkpoint, image_folder, capsys):
    files = sorted((image_folder / "val" / "red").iterdir())
    res = predict(checkpoint, [str(files[0]), str(image_folder / "val" / "blue")], topk=2)
    assert len(res) == 1 + 4
    model = load_checkpoint(checkpoint)
    probs = model(torch.from_numpy(eval_image(load_image(files[0]), model.meta.preprocessing))[None]).softmax(1)[0]
    top = res[0]["top"]
    assert [t["class"] for t in top] == [CLASSES[i] for i in probs.topk(2).indices]
    assert top[0]["prob"] == pytest.approx(probs.max().item(), abs=1e-5)
    assert main(["predict", str(checkpoint), str(files[0]), "--topk", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(t["prob"] for t in out[0]["top"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_reports_an_undecodable_file(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert predict(checkpoint, [str(bad)])[0]["error"].startswith("cannot decode image")
    assert main(["predict", str(checkpoint), str(bad), "--strict"]) == 2
    assert "cannot decode image" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(tmp_path / "nope.png")]) == 2


def test_checkpoint_with_weights_of_another_architecture(tmp_path, capsys, image_folder):
    from safetensors.torch import load_file, save_file

    a = mobilenet_v2(width_mult=0.35, num_classes=3)
    path = save_checkpoint(tmp_path / "a.safetensors", a, CheckpointMeta(a.config, class_names=CLASSES))
    meta = load_file(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    b = mobilenet_v2(width_mult=0.5, num_classes=3)
    save_file(b.state_dict(), tmp_path / "b.safetensors", metadata=header)  # 0.35's metadata, 0.5's weights
    assert meta
    assert main(["eval", str(tmp_path / "b.safetensors"), "--data", str(image_folder)]) == 2
    err = capsys.readouterr().err
    assert "do not fit the architecture" in err and err.count("\n") == 1


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_predict_with_an_engine_matches_torch(checkpoint, image_folder, tmp_path, monkeypatch, capsys, engine):
    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    inputs = [str(image_folder / "val")]
    want = predict(checkpoint, inputs, topk=3)
    assert main(["predict", str(checkpoint), *inputs, "--topk", "3", "--engine", engine, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in got] == [r["path"] for r in want] and len(got) == 12
    for g, w in zip(got, want):
        assert [t["class"] for t in g["top"]] == [t["class"] for t in w["top"]]
        assert [t["prob"] for t in g["top"]] == pytest.approx([t["prob"] for t in w["top"]], abs=1e-4)


@pytest.mark.isolated  # converts with litert-torch in-process; see the marker's note in pyproject.toml
def test_predict_runs_exported_onnx_and_tflite_files_and_refuses_baked_ones(checkpoint, image_folder, tmp_path, capsys):
    from mnv2.deploy.runtime.engines import clear_cache

    clear_cache()
    files = [str(f) for f in sorted((image_folder / "val" / "green").iterdir())]
    want = predict(checkpoint, files, topk=1)
    plain, baked = tmp_path / "m.onnx", tmp_path / "baked.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(plain)]) == 0
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(baked), "--bake-preprocessing"]) == 0
    capsys.readouterr()
    assert main(["predict", str(plain), *files, "--topk", "1", "--json"]) == 0  # ONNX: engine auto
    got = json.loads(capsys.readouterr().out)
    assert [g["top"][0]["class"] for g in got] == [w["top"][0]["class"] for w in want]
    tfl = tmp_path / "m.tflite"  # TFLite: metadata from the sidecar, run by LiteRT
    assert main(["export", str(checkpoint), "--format", "tflite", "--static-batch", "--out", str(tfl)]) == 0
    capsys.readouterr()
    assert main(["predict", str(tfl), *files, "--topk", "1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [g["top"][0]["class"] for g in got] == [w["top"][0]["class"] for w in want]
    assert main(["predict", str(baked), *files]) == 2
    assert "preprocessing baked in" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), *files, "--engine", "tensorrt"]) == 2
    assert "unknown engine" in capsys.readouterr().err
