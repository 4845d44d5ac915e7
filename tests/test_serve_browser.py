"""The web page of `mnv2 serve` in a real headless browser: Debian's Chromium driven by Playwright (no browser is
downloaded: `make setup` installs the `chromium` package). For each task the test uploads a real photo, waits for
the drawing, checks it and saves a screenshot (issue 17)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_serve import PHOTOS, STREET, free_port, start_server, write_models

pytestmark = pytest.mark.slow
SCREENSHOTS = Path(os.environ.get("MNV2_SCREENSHOTS", "")) if os.environ.get("MNV2_SCREENSHOTS") else None
BOX_RGB = (230, 25, 75)  # the page's colour of class 1


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: `make setup` installs Debian's chromium package"
    return path


def canvas_pixels(page) -> np.ndarray:
    data = page.evaluate("""() => { const c = document.querySelector('#view');
        return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }""")
    w, h, flat = data
    return np.asarray(flat, dtype=np.uint8).reshape(h, w, 4)[..., :3]


def test_page_draws_each_task_for_an_uploaded_photo(tmp_path):
    from playwright.sync_api import sync_playwright

    paths = write_models(tmp_path)
    port = free_port()
    server = start_server([*map(str, paths.values()), "--engine", "torch", "--threads", "1"], port)
    shots = SCREENSHOTS or tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 3")
            for model, photo in (("main-217d691-default", PHOTOS[0]), ("detector", PHOTOS[1]), ("segmenter", STREET)):
                page.select_option("#model", model)
                page.evaluate("document.querySelector('#result').dataset.state = 'idle'")
                page.set_input_files("#file", str(photo))
                page.wait_for_selector("#result[data-state=done]", timeout=60_000)
                count = int(page.get_attribute("#result", "data-count"))
                assert "server" in page.inner_text("#latency") and "ms" in page.inner_text("#latency")
                pixels = canvas_pixels(page)
                w, h = Image.open(photo).size
                assert pixels.shape[1] == round(w * min(900 / w, 700 / h))  # the photo, fitted to 900 x 700
                page.screenshot(path=str(shots / f"serve-{model}.png"), full_page=True)
                if model == "main-217d691-default":
                    assert count == 5 and len(page.query_selector_all("#result .bar")) == 5
                elif model == "detector":
                    assert count > 0  # untrained: low-confidence boxes, drawn in class 1's colour
                    assert (np.abs(pixels.astype(int) - BOX_RGB).sum(-1) == 0).sum() > 100
                else:
                    photo_mean = np.asarray(Image.open(photo).convert("RGB").resize(pixels.shape[1::-1])).mean((0, 1))
                    assert count > 0 and np.abs(pixels.mean((0, 1)) - photo_mean).max() > 2  # the mask is over it
            browser.close()
    finally:
        server.terminate()
        server.wait(60)
    assert (shots / "serve-detector.png").stat().st_size > 10_000


def test_live_mode_keeps_sending_camera_frames_and_drawing_their_results(tmp_path):
    """Issue 26, 6: Chromium's fake camera plays a clip of real raccoon photos; in live mode the page sends the
    newest frame after each answer and draws the boxes over it with the answers per second."""
    import av
    from playwright.sync_api import sync_playwright

    clip = tmp_path / "cam.y4m"
    with av.open(str(clip), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for photo in PHOTOS[:4]:
            frame = np.asarray(Image.open(photo).convert("RGB").resize((640, 480)))
            for _ in range(10):  # one second a photo
                out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    detector = Path(__file__).parents[1] / "examples" / "models" / "raccoon_ssdlite_mnv2.safetensors"
    port = free_port()
    server = start_server([str(detector), "--engine", "torch", "--threads", "1"], port)
    shots = SCREENSHOTS or tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=[
                "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={clip}"])  # fmt: skip
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 1")
            page.click("#camera")
            page.wait_for_selector("#live", state="visible")
            page.click("#live")
            page.wait_for_function("Number(document.querySelector('#result').dataset.liveFrames || 0) >= 8",
                                   timeout=90_000)  # fmt: skip
            deadline = time.time() + 60  # the fake camera's first frames can be black while it starts
            while time.time() < deadline:
                pixels = canvas_pixels(page)
                if (np.abs(pixels.astype(int) - BOX_RGB).sum(-1) == 0).sum() > 100:
                    break
                time.sleep(0.5)
            assert pixels.shape[:2] == (675, 900)  # the camera's 640x480 frame, fitted to the view
            assert (np.abs(pixels.astype(int) - BOX_RGB).sum(-1) == 0).sum() > 100  # with the raccoon's box
            assert " fps" in page.inner_text("#latency") and "live" in page.inner_text("#latency")
            page.screenshot(path=str(shots / "serve-live.png"), full_page=True)
            before = int(page.get_attribute("#result", "data-live-frames"))
            page.wait_for_function(f"Number(document.querySelector('#result').dataset.liveFrames) > {before + 3}")
            page.click("#live")  # stop
            browser.close()
    finally:
        server.terminate()
        server.wait(60)
