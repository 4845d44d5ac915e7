"""The torch-free ``runtime`` install (issue 25): a fresh venv with ``pip install ".[runtime,serve]"`` runs the exported
``.onnx`` and ``.tflite`` files of the three example models, in ``mnv2 predict`` and ``mnv2 serve``, with the results
of the full install's ``mnv2 predict`` of the checkpoints; verbs that need torch say which extra brings it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "examples" / "models"
DATA = ROOT.parent / "shared" / "data"
EXAMPLES = {
    "classification": ("fashion_mnist_mnv2", [DATA / "raccoon" / "images" / f"raccoon-{i}.jpg" for i in (1, 2, 3)]),
    "detection": ("raccoon_ssdlite_mnv2", [DATA / "raccoon" / "images" / f"raccoon-{i}.jpg" for i in (1, 2, 3, 4)]),
    "segmentation": ("camvid_deeplabv3_mnv2", sorted((DATA / "camvid" / "val").glob("*.png"))[:2]),
}
FORMATS = ("onnx", "tflite")

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_FIND_LINKS"] = ""  # this machine's pip config points at a local torch wheel: keep it out of reach
    return env


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A fresh venv with the checkout installed as ``.[runtime,serve]`` (no torch anywhere in it)."""
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"{ROOT}[runtime,serve]"], check=True, env=_env(), cwd=venv.parent, timeout=900)
    return venv / "bin"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Each example model exported with default options by the full install's CLI, as ONNX and as TFLite."""
    out = tmp_path_factory.mktemp("exports")
    files = {}
    for task, (name, _) in EXAMPLES.items():
        for fmt in FORMATS:
            path = out / f"{name}.{fmt}"
            args = ["export", str(MODELS / f"{name}.safetensors"), "--out", str(path)]
            args += ["--format", fmt] if fmt != "onnx" else []
            subprocess.run([sys.executable, "-m", "mnv2.cli", *args], check=True, capture_output=True, timeout=600)
            files[task, fmt] = path
    return files


def _predict(mnv2: list[str], model: Path, images: list[Path], out: Path) -> list[dict]:
    cmd = [*mnv2, "predict", str(model), *map(str, images), "--json", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, tuple[list[dict], Path]]:
    """The full install's ``mnv2 predict`` of each checkpoint (torch)."""
    out = tmp_path_factory.mktemp("reference")
    return {
        task: (
            _predict([sys.executable, "-m", "mnv2.cli"], MODELS / f"{name}.safetensors", imgs, out / task),
            out / task,
        )
        for task, (name, imgs) in EXAMPLES.items()
    }


def _iou(a: list[float], b: list[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


def _same(task: str, got: list[dict], want: list[dict], got_dir: Path, want_dir: Path) -> None:
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        if task == "classification":
            assert [t["class"] for t in g["top"]] == [t["class"] for t in w["top"]]
            np.testing.assert_allclose([t["prob"] for t in g["top"]], [t["prob"] for t in w["top"]], atol=1e-4)
        elif task == "detection":
            assert len(g["detections"]) == len(w["detections"]), (g, w)
            for dg, dw in zip(g["detections"], w["detections"]):
                assert dg["label"] == dw["label"]
                assert _iou(dg["bbox"], dw["bbox"]) >= 0.99
                assert abs(dg["score"] - dw["score"]) <= 1e-3
            assert Path(g["image"]).is_file()
        else:
            a = np.asarray(Image.open(g["label"]))
            b = np.asarray(Image.open(w["label"]))
            assert a.shape == b.shape == (w["height"], w["width"])
            assert (a == b).mean() >= 0.999


def test_the_runtime_install_has_no_torch_and_predicts_and_serves_as_the_full_install(
    runtime_venv, exports, reference, tmp_path
):
    assert subprocess.run([str(runtime_venv / "python"), "-c", "import torch"], capture_output=True).returncode != 0
    for (task, fmt), model in exports.items():
        got = _predict([str(runtime_venv / "mnv2")], model, EXAMPLES[task][1], tmp_path / f"{task}-{fmt}")
        want, want_dir = reference[task]
        _same(task, got, want, tmp_path / f"{task}-{fmt}", want_dir)
    _serve_once(runtime_venv, exports, reference)


def test_verbs_that_need_torch_name_the_extra(runtime_venv, tmp_path):
    mnv2 = str(runtime_venv / "mnv2")
    for args in (
        ["train", "--out", str(tmp_path / "run"), "--epochs", "1"],
        ["predict", str(MODELS / "fashion_mnist_mnv2.safetensors"), str(EXAMPLES["detection"][1][0])],
        ["export", str(MODELS / "fashion_mnist_mnv2.safetensors"), "--out", str(tmp_path / "x.onnx")],
        ["eval", str(MODELS / "fashion_mnist_mnv2.safetensors"), "--data", "fashion-mnist"],
    ):
        r = subprocess.run([mnv2, *args], capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "mnv2[train]" in lines[0] and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "run").exists() and not (tmp_path / "x.onnx").exists()


def _serve_once(runtime_venv: Path, exports: dict, reference: dict) -> None:
    """One request to ``mnv2 serve`` of the exported detector in the runtime venv: the checkpoint's boxes."""
    port = free_port()
    model = exports["detection", "tflite"]
    server = subprocess.Popen(
        [str(runtime_venv / "mnv2"), "serve", str(model), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, server)
        image = EXAMPLES["detection"][1][1]
        req = urllib.request.Request(
            f"{url}/v1/models/{model.stem}:predict", data=image.read_bytes(), headers={"Content-Type": "image/jpeg"}
        )
        got = json.loads(urllib.request.urlopen(req, timeout=60).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    want = reference["detection"][0][1]
    assert got["task"] == "detection" and len(got["detections"]) == len(want["detections"]) > 0
    for dg, dw in zip(got["detections"], want["detections"]):
        assert _iou(dg["bbox"], dw["bbox"]) >= 0.99 and abs(dg["score"] - dw["score"]) <= 1e-3
