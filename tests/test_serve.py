"""`mnv2 serve`: every endpoint for every task, the bad inputs, the API key, the queue bound, micro-batching and a
graceful SIGTERM (issue 17). The browser test is tests/test_serve_browser.py."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from conftest import free_port, wait_until_serving
from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
from mnv2.deploy.runtime.predict import predict as deploy_predict
from mnv2.errors import ConfigError
from mnv2.models.deeplab import DeepLabConfig, DeepLabV3
from mnv2.models.mobilenetv2 import MobileNetV2Config
from mnv2.models.ssdlite import SSDLite, SSDLiteConfig
from mnv2.serve import ServedModel, ServeSettings, create_app, serve
from mnv2.weights.checkpoint import CheckpointMeta, save_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
CLASSIFIER = FIXTURES / "main-217d691-default.safetensors"  # the default recipe's Fashion-MNIST model
PHOTOS = sorted((FIXTURES / "detection" / "raccoon" / "images").glob("*.jpg"))
CAMVID = json.loads((FIXTURES / "segmentation" / "camvid" / "classes.json").read_text())
STREET = sorted((FIXTURES / "segmentation" / "camvid" / "val").glob("*.png"))[0]


def write_models(root: Path) -> dict[str, Path]:
    """A detector and a segmenter with random weights (the tests check the plumbing against mnv2 predict, not
    accuracy), and the committed-format classifier fixture."""
    torch.manual_seed(0)
    det = SSDLite(MobileNetV2Config(width_mult=0.35), SSDLiteConfig(num_classes=1)).eval()
    det_pre = Preprocessing(input_size=128, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    seg = DeepLabV3(
        MobileNetV2Config(width_mult=0.35, output_stride=16, num_classes=0),
        DeepLabConfig(num_classes=11, class_colors=CAMVID["colors"]),
    ).eval()
    seg_pre = Preprocessing(input_size=128, crop_pct=1.0, mean=TF_MEAN, std=TF_STD)
    return {
        "classifier": CLASSIFIER,
        "detector": save_checkpoint(root / "detector.safetensors", det, CheckpointMeta(
            det.config, det_pre, ["raccoon"], task="detection", head=det.head_config)),
        "segmenter": save_checkpoint(root / "segmenter.safetensors", seg, CheckpointMeta(
            seg.config, seg_pre, CAMVID["names"], task="segmentation", head=seg.head_config)),
    }  # fmt: skip


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("serve"))


SETTINGS = ServeSettings(max_body_bytes=2 * 2**20, max_pixels=5_000_000, max_wait_ms=1.0)


@pytest.fixture(scope="module")
def client(paths):
    models = [ServedModel(p, "torch", threads=1) for p in paths.values()]
    with TestClient(create_app(models, SETTINGS)) as c:
        yield c


def predict(client, model: str, data: bytes, **kw) -> httpx.Response:
    return client.post(f"/v1/models/{model}:predict", files={"image": ("x.jpg", data, "image/jpeg")}, **kw)


def same_as_mnv2_predict(path: Path, image: Path, **options) -> dict:
    """What `mnv2 predict` answers for the file (torch engine): the reference for the server's answers."""
    return deploy_predict(path, [str(image)], "torch", threads=1, **options)[0]


# ----------------------------------------------------------------------------------------------- endpoints
def test_models_describe_each_task(client, paths):
    r = client.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert {n: m["task"] for n, m in models.items()} == {
        "main-217d691-default": "classification", "detector": "detection", "segmenter": "segmentation"}  # fmt: skip
    cls = models["main-217d691-default"]
    assert len(cls["classes"]) == 10 and cls["classes"][0] == "T-shirt/top" and cls["input_size"] == 32
    assert cls["engine"] == "torch" and cls["precision"] == "fp32" and "mean" in cls["preprocessing"]
    assert models["detector"]["classes"] == ["raccoon"] and models["detector"]["input_size"] == 128
    assert models["segmenter"]["class_colors"] == CAMVID["colors"] and models["segmenter"]["input_size"] is None
    assert client.get("/healthz").json() == {"status": "ok", "models": list(models)}


def test_classification_answers_as_mnv2_predict_multipart_and_raw(client, paths):
    data = PHOTOS[0].read_bytes()
    want = same_as_mnv2_predict(paths["classifier"], PHOTOS[0], topk=3)["top"]
    for r in (predict(client, "main-217d691-default", data, params={"topk": 3}),
              client.post("/v1/models/main-217d691-default:predict?topk=3", content=data,
                          headers={"content-type": "image/jpeg"})):  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task"] == "classification" and body["latency_ms"] > 0
        assert [t["class"] for t in body["top"]] == [t["class"] for t in want]
        np.testing.assert_allclose([t["prob"] for t in body["top"]], [t["prob"] for t in want], atol=1e-5)


def test_detection_answers_coco_boxes_as_mnv2_predict(client, paths):
    want = same_as_mnv2_predict(paths["detector"], PHOTOS[1], min_score=0.0)
    r = predict(client, "detector", PHOTOS[1].read_bytes(), params={"min_score": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    w, h = Image.open(PHOTOS[1]).size
    assert (body["width"], body["height"]) == (w, h) and len(body["detections"]) == len(want["detections"]) > 0
    for got, ref in zip(body["detections"], want["detections"]):
        assert got["label"] == ref["label"] == "raccoon" and got["category_id"] == 1
        np.testing.assert_allclose(got["bbox"], ref["bbox"], atol=0.05)
        assert abs(got["score"] - ref["score"]) < 1e-4
    strict = predict(client, "detector", PHOTOS[1].read_bytes(), params={"min_score": 0.99}).json()
    assert all(d["score"] >= 0.99 for d in strict["detections"])


def test_segmentation_answers_a_palette_mask_png_and_fractions(client, paths):
    want = same_as_mnv2_predict(paths["segmenter"], STREET)
    r = predict(client, "segmenter", STREET.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    mask = Image.open(io.BytesIO(base64.b64decode(body["mask_png"])))
    assert mask.mode == "P" and mask.size == Image.open(STREET).size == (body["width"], body["height"])
    labels = np.asarray(mask)
    assert labels.max() < 11
    assert mask.getpalette()[: 3 * 11] == [c for rgb in CAMVID["colors"] for c in rgb]
    assert body["fractions"] == want["fractions"]
    counts = np.bincount(labels.ravel(), minlength=11) / labels.size
    np.testing.assert_allclose(list(body["fractions"].values()), counts, atol=1e-6)


def test_metrics_count_requests_errors_latency_batches_and_queue(client):
    predict(client, "main-217d691-default", PHOTOS[0].read_bytes())
    client.post("/v1/models/main-217d691-default:predict", content=b"nope", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'mnv2_requests_total{model="main-217d691-default",status="200"}' in text
    assert 'mnv2_requests_total{model="main-217d691-default",status="400"}' in text
    assert 'mnv2_errors_total{status="400"}' in text
    assert 'mnv2_request_latency_seconds_bucket{le="0.1",model="main-217d691-default"}' in text
    assert 'mnv2_batch_size_count{model="main-217d691-default"}' in text
    assert 'mnv2_queue_depth{model="main-217d691-default"} 0.0' in text


# ----------------------------------------------------------------------------------------------- bad input
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's signature): decoding it would
    allocate width * height pixels."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = b"IDAT" + zlib.compress(b"\0" * 1024)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return head + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))


# A PostScript page: Pillow's EPS plugin would decode it by running Ghostscript (issue 28, 1).
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
FORM_WITHOUT_FILE = b'--xx\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--xx--\r\n'


def post(client, body, content_type: str, model: str = "detector") -> httpx.Response:
    return client.post(f"/v1/models/{model}:predict", content=body, headers={"content-type": content_type})


@pytest.mark.parametrize(
    "case, send, status, words",
    [
        ("over the body limit", lambda c: predict(c, "detector", b"\xff" * (2 * 2**20 + 1)), 413, "limit"),
        ("streamed over the limit", lambda c: post(c, iter([b"\xff" * 2**20] * 3), "image/jpeg"), 413, "limit"),
        ("not an image", lambda c: predict(c, "detector", b"hello world"), 400, "cannot decode"),
        ("PostScript as image/jpeg", lambda c: predict(c, "detector", POSTSCRIPT), 400, "not a supported image"),
        ("truncated jpeg", lambda c: predict(c, "detector", PHOTOS[0].read_bytes()[:3000]), 400, "cannot decode"),
        ("empty body", lambda c: predict(c, "detector", b""), 400, "no image"),
        ("decompression bomb", lambda c: predict(c, "detector", png_header_only(100_000, 100_000)), 413, "pixels"),
        ("wrong content type", lambda c: post(c, b"{}", "application/json"), 415, "content type"),
        ("multipart without a file", lambda c: post(c, FORM_WITHOUT_FILE, "multipart/form-data; boundary=xx"), 400,
         "no file"),
        ("malformed multipart", lambda c: post(c, b"garbage", "multipart/form-data"), 400, "multipart"),
        ("unknown model", lambda c: predict(c, "nope", PHOTOS[0].read_bytes()), 404, "no model named"),
        ("bad topk", lambda c: predict(c, "main-217d691-default", PHOTOS[0].read_bytes(), params={"topk": "x"}),
         400, "topk"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_4xx_and_the_server_stays_up(client, case, send, status, words):
    r = send(client)
    assert r.status_code == status, (case, r.text)
    assert words in r.json()["error"] and "Traceback" not in r.text
    assert predict(client, "detector", PHOTOS[0].read_bytes()).status_code == 200  # still serving


def test_a_multipart_form_without_a_file_field_is_refused(client):
    r = client.post("/v1/models/detector:predict", files={"other": ("a.txt", b"x", "text/plain")})
    assert r.status_code == 400 and "cannot decode" in r.json()["error"]  # the one file is taken, and refused


# ----------------------------------------------------------------------------------------------- safety
def test_api_key_guards_the_api_but_not_the_page_or_health(paths):
    app = create_app([ServedModel(paths["classifier"], "torch", threads=1)], ServeSettings(api_key="s3cret"))
    with TestClient(app) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        r = c.post("/v1/models/main-217d691-default:predict", content=PHOTOS[0].read_bytes(),
                   headers={"content-type": "image/jpeg"})  # fmt: skip
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200 and "<title>mnv2 serve</title>" in c.get("/").text


def test_binding_beyond_loopback_needs_an_api_key(paths):
    with pytest.raises(ConfigError, match="needs an API key"):
        serve([str(paths["classifier"])], host="0.0.0.0", port=0)


def test_queue_bound_answers_503_with_retry_after_and_memory_stays_bounded(paths):
    gate = threading.Event()
    model = ServedModel(paths["classifier"], "torch", threads=1)
    run = model.infer
    model.infer = lambda jobs: (gate.wait(30), run(jobs))[1]  # the first batch holds the worker
    app = create_app([model], ServeSettings(max_batch=1, max_queue=2, max_wait_ms=0))
    data = PHOTOS[0].read_bytes()
    answers: list[int] = []
    with TestClient(app) as c:
        batcher = app.state.batchers[model.name]

        def call():
            answers.append(predict(c, model.name, data).status_code)

        threads = [threading.Thread(target=call) for _ in range(3)]  # one in flight, two waiting
        for t in threads:
            t.start()
            time.sleep(0.3)
        deadline = time.time() + 20
        while batcher.depth < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert batcher.depth == 2
        r = predict(c, model.name, data)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
        gate.set()
        for t in threads:
            t.join(30)
    assert answers == [200, 200, 200]


def test_concurrent_requests_share_a_batch_with_the_single_image_answers(paths):
    model = ServedModel(paths["detector"], "torch", threads=1)
    sizes: list[int] = []
    run = model.infer
    model.infer = lambda jobs: (sizes.append(len(jobs)), run(jobs))[1]
    app = create_app([model], ServeSettings(max_batch=8, max_wait_ms=500))
    with TestClient(app) as c:
        alone = {p: predict(c, "detector", p.read_bytes(), params={"min_score": 0}).json() for p in PHOTOS[:4]}
        sizes.clear()
        together: dict = {}

        def call(p: Path) -> None:
            together[p] = predict(c, "detector", p.read_bytes(), params={"min_score": 0}).json()

        threads = [threading.Thread(target=call, args=(p,)) for p in PHOTOS[:4]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert max(sizes) > 1  # at least two requests ran as one batch
    for p in PHOTOS[:4]:
        got, ref = together[p]["detections"], alone[p]["detections"]
        assert len(got) == len(ref)
        np.testing.assert_allclose([d["bbox"] for d in got], [d["bbox"] for d in ref], atol=0.05)


def test_a_lone_request_runs_at_once_and_one_on_its_way_is_waited_for():
    import asyncio

    from mnv2.serve.batcher import Job, MicroBatcher

    sizes: list[int] = []

    async def scenario() -> tuple[float, list]:
        b = MicroBatcher(lambda jobs: (sizes.append(len(jobs)), [j.options["n"] for j in jobs])[1], max_wait=5.0)
        b.start()
        t = time.perf_counter()
        assert await b.submit(Job(torch.zeros(3), None, {"n": 0})) == 0  # nothing else is coming: no 5 s wait
        alone = time.perf_counter() - t

        async def later() -> int:  # a request whose image is still being decoded when the first one is queued
            with b.expecting():
                await asyncio.sleep(0.2)
                answer = b.enqueue(Job(torch.zeros(3), None, {"n": 2}))
            return await answer

        both = await asyncio.gather(b.submit(Job(torch.zeros(3), None, {"n": 1})), later())
        await b.stop()
        return alone, both

    alone, both = asyncio.run(scenario())
    assert alone < 1.0 and both == [1, 2] and sizes == [1, 2]  # the second batch waited for the one on its way


def test_the_next_batch_runs_while_the_last_one_is_finished():
    import asyncio

    from mnv2.serve.batcher import Job, MicroBatcher

    release = threading.Event()
    events: list[str] = []

    def infer(jobs):
        events.append(f"infer {jobs[0].options['n']}")
        return [j.options["n"] for j in jobs]

    def finish(jobs, outputs):
        if outputs == [0]:  # the first batch's post-processing waits until the second batch has run
            assert release.wait(10)
        events.append(f"finish {outputs[0]}")
        return outputs

    async def scenario() -> list:
        b = MicroBatcher(infer, finish=finish, max_batch=1, max_wait=0)
        b.start()
        first = asyncio.ensure_future(b.submit(Job(torch.zeros(3), None, {"n": 0})))
        second = b.enqueue(Job(torch.zeros(3), None, {"n": 1}))
        while "infer 1" not in events:
            await asyncio.sleep(0.01)
        release.set()
        answers = [await first, await second]
        await b.stop()
        return answers

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == [0, 1]
    assert events.index("infer 1") < events.index("finish 0")


# ----------------------------------------------------------------------------------------------- the process
def start_server(args: list[str], port: int, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mnv2.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip
    wait_until_serving(f"http://127.0.0.1:{port}", proc)
    return proc


@pytest.mark.slow
def test_sigterm_answers_the_requests_in_flight_then_exits_0(paths):
    port = free_port()
    # a batch waits 3 s for company, so the request is surely in flight when SIGTERM comes
    proc = start_server([str(paths["detector"]), "--engine", "torch", "--threads", "1", "--max-wait-ms", "3000"], port)
    result: dict = {}

    def call():
        with open(PHOTOS[0], "rb") as f:
            result["r"] = httpx.post(f"http://127.0.0.1:{port}/v1/models/detector:predict", content=f.read(),
                                     headers={"content-type": "image/jpeg"}, timeout=60)  # fmt: skip

    t = threading.Thread(target=call)
    t.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    t.join(60)
    out, _ = proc.communicate(timeout=60)
    assert result["r"].status_code == 200 and "detections" in result["r"].json()
    assert proc.returncode == 0, out


def test_cli_refuses_a_non_loopback_bind_without_a_key_and_a_busy_port(paths):
    r = subprocess.run([sys.executable, "-m", "mnv2.cli", "serve", str(paths["classifier"]), "--host", "0.0.0.0"],
                       capture_output=True, text=True, env={**os.environ, "MNV2_API_KEY": ""})  # fmt: skip
    assert r.returncode == 2 and "needs an API key" in r.stderr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = subprocess.run([sys.executable, "-m", "mnv2.cli", "serve", str(paths["classifier"]), "--port",
                            str(s.getsockname()[1])], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "cannot listen" in r.stderr


def test_a_glob_of_a_model_folder_serves_its_models_and_skips_the_rest(tmp_path, paths):
    from mnv2.serve.app import model_files

    (tmp_path / "README.md").write_text("model card")
    (tmp_path / "m.tflite.json").write_text("{}")
    (tmp_path / "m.safetensors").write_bytes(paths["classifier"].read_bytes())
    assert model_files([str(p) for p in sorted(tmp_path.iterdir())]) == [tmp_path / "m.safetensors"]
    assert model_files([str(tmp_path)]) == [tmp_path / "m.safetensors"]
    with pytest.raises(ConfigError, match="no model file"):
        model_files([str(tmp_path / "README.md")])


def test_a_fresh_clone_serves_the_committed_example_models():
    """`mnv2 serve examples/models/*` (the README's command) loads every committed model and answers."""
    from mnv2.serve.app import model_files

    root = Path(__file__).parents[1] / "examples" / "models"
    files = model_files([str(p) for p in sorted(root.iterdir())])
    assert "fashion_mnist_mnv2.safetensors" in [f.name for f in files]
    with TestClient(create_app([ServedModel(f, "torch", threads=1) for f in files])) as c:
        for m in c.get("/v1/models").json()["models"]:
            photo = STREET if m["task"] == "segmentation" else PHOTOS[0]
            r = predict(c, m["name"], photo.read_bytes())
            assert r.status_code == 200 and r.json()["task"] == m["task"], r.text


# ----------------------------------------------------------------------------------------------- issue 28, 3
def _multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--BB--\r\n"


def _part(name: str | None, data: bytes, extra: bytes = b"") -> bytes:
    disposition = b"form-data" + (b'; name="%s"' % name.encode() if name else b"") + b'; filename="x.jpg"'
    return (
        b"--BB\r\nContent-Disposition: "
        + disposition
        + b"\r\n"
        + extra
        + b"Content-Type: image/jpeg\r\n\r\n"
        + data
        + b"\r\n"
    )


def _500s(client) -> float:
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith("mnv2_requests_total")]
    return sum(float(line.split()[-1]) for line in lines if 'status="500"' in line)


@pytest.mark.parametrize(
    "case, body",
    [
        ("two files", lambda img: _multipart(_part("image", img), _part("other", img))),
        ("a part without a name", lambda img: _multipart(_part(None, img))),
        ("a wrong boundary", lambda img: _multipart(_part("image", img)).replace(b"--BB", b"--CC")),
        ("100 fields", lambda img: _multipart(*(b'--BB\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i
                                                for i in range(100)), _part("image", img))),
        ("a 200 kB part header", lambda img: _multipart(_part("image", img, b"X-Junk: " + b"a" * 200_000 + b"\r\n"))),
    ],
)  # fmt: skip
def test_malformed_multipart_is_a_400_with_one_message(client, case, body):
    before = _500s(client)
    r = post(client, body(PHOTOS[0].read_bytes()), "multipart/form-data; boundary=BB")
    assert r.status_code == 400, (case, r.text)
    assert r.json()["error"].startswith("malformed multipart body") and "Traceback" not in r.text
    assert _500s(client) == before


def test_a_client_that_disconnects_mid_request_is_no_500_and_no_traceback(client, caplog):
    """The ASGI app itself, fed a request whose client goes away before the body has arrived."""
    import asyncio

    sent: list[dict] = []
    messages = [{"type": "http.request", "body": PHOTOS[0].read_bytes()[:1000], "more_body": True},
                {"type": "http.disconnect"}]  # fmt: skip

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/models/detector:predict", "raw_path": b"/v1/models/detector:predict", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"image/jpeg")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "app": client.app}  # fmt: skip
    before = _500s(client)
    with caplog.at_level("INFO", logger="mnv2.serve"):
        asyncio.run(client.app(scope, receive, send))
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info], caplog.text
    assert _500s(client) == before
    assert 'status="499"' in client.get("/metrics").text
    assert predict(client, "detector", PHOTOS[0].read_bytes()).status_code == 200  # still serving


def test_a_streamed_body_over_the_limit_is_counted_as_413_not_500(client):
    before = _500s(client)
    r = post(client, iter([b"\xff" * 2**20] * 3), "image/jpeg")
    assert r.status_code == 413 and _500s(client) == before
    assert 'mnv2_requests_total{model="detector",status="413"}' in client.get("/metrics").text


# ----------------------------------------------------------------------------------------------- issue 28, 2
def test_slow_clients_do_not_lock_out_the_others():
    """150 clients that send their headers and then dribble the body held uvicorn's connection slots: every client,
    /healthz included, got 503 while they stayed. Now a real server answers /healthz and a normal predict within
    5 s while they are open, and gives each slow one a 408 at its body deadline."""
    import socket
    import urllib.request

    port = free_port()
    model = Path(__file__).parents[1] / "examples" / "models" / "fashion_mnist_mnv2.safetensors"
    server = start_server([str(model), "--engine", "torch", "--threads", "1", "--body-timeout-s", "8"], port)
    url = f"http://127.0.0.1:{port}"
    slow: list[socket.socket] = []
    try:
        head = (f"POST /v1/models/{model.stem}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                "Content-Length: 100000\r\n\r\n").encode()  # fmt: skip
        for _ in range(150):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            c.sendall(head + b"\xff")  # headers, then one byte of a 100 kB body
            slow.append(c)
        t0 = time.perf_counter()
        assert urllib.request.urlopen(f"{url}/healthz", timeout=5).status == 200
        req = urllib.request.Request(f"{url}/v1/models/{model.stem}:predict", data=PHOTOS[0].read_bytes(),
                                     headers={"Content-Type": "image/jpeg"})  # fmt: skip
        answer = json.loads(urllib.request.urlopen(req, timeout=5).read())
        assert answer["top"] and time.perf_counter() - t0 < 5
        reply = slow[0].recv(200)  # at its 8 s body deadline
        assert reply.startswith(b"HTTP/1.1 408"), reply
    finally:
        for c in slow:
            c.close()
        server.terminate()
        server.wait(timeout=30)
