import os
import sys
from pathlib import Path

# Keras 3 picks its backend once, at first import: the tests use PyTorch's (no TensorFlow here).
os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/deploy_data.py

# Two CPU cores: under pytest-xdist each worker gets one thread, so workers do not fight over cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """Each test runs in its own directory: what a verb writes by default (eval's report picture, predict's
    ./predictions) lands there, never in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the 2-core machine is shared, and OpenMP's lock-step threads lose badly to a
    busy neighbour (40x measured here). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_image_folder(root, classes=("red", "green", "blue"), n=8, size=40, seed=0):
    """Tiny learnable image folder: each class is a noisy image dominated by one colour channel."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] = rng.integers(150, 255, (size, size), dtype=np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    """root/train/<class> and root/val/<class> with 3 classes."""
    make_image_folder(tmp_path / "data" / "train", n=10, seed=1)
    make_image_folder(tmp_path / "data" / "val", n=4, seed=2)
    return tmp_path / "data"


class _Files:
    """What the local test server serves: ``routes[path] = bytes``; ``short[path]`` claims more bytes than sent."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.short: set[str] = set()
        self.requests: list[str] = []


@pytest.fixture
def http_server():
    """A file server on 127.0.0.1 (no hub access here): yields ``(base_url, files)``; stops after the test."""
    import http.server
    import threading

    files = _Files()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            files.requests.append(self.path)
            body = files.routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) * (2 if self.path in files.short else 1)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A MobileNetV2 0.35 trained on the synthetic 8-class task (tests/deploy_data.py), shared by xdist workers.

    Trained once per test run: the first worker takes a file lock and trains, the other waits and reuses it.
    """
    import fcntl

    from deploy_data import train_tiny

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "tiny-synthetic.safetensors"
    with open(root / "tiny-synthetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            train_tiny(path)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, server, seconds: float = 120) -> None:
    """Wait until ``url``'s ``/healthz`` answers (the engine loads before the port opens); fail with the server's
    output if ``server`` (a ``Popen``) exits first, and kill it if it does not answer within ``seconds``."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            out = (server.stderr or server.stdout).read()
            raise AssertionError(f"the server exited {server.returncode}: {out}")
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise AssertionError(f"the server did not start in {seconds} s")
