"""Video files, streams and cameras (issue 26): `mnv2 predict MODEL SOURCE --out DIR` writes DIR/<stem>.jsonl (one
object per processed frame) and DIR/<stem>.mp4 (the results drawn), on clips made of real photos."""

from __future__ import annotations

import http.server
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import free_port
from mnv2.cli import main
from mnv2.errors import ConfigError

ROOT = Path(__file__).parents[1]
DATA = ROOT.parent / "shared" / "data"
SEGMENTER = ROOT / "examples" / "models" / "camvid_deeplabv3_mnv2.safetensors"
DETECTOR = ROOT / "examples" / "models" / "raccoon_ssdlite_mnv2.safetensors"
CLASSIFIER = ROOT / "examples" / "models" / "fashion_mnist_mnv2.safetensors"


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def decoded(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as c:
        return [f.to_image() for f in c.decode(c.streams.video[0])]


def video_info(path: Path) -> tuple[int, int, int, float]:
    """(frames decoded, width, height, frame rate) of a playable file."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.width, s.height, float(s.average_rate)


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    """12 consecutive-looking CamVid road scenes (480x360) at 10 fps."""
    photos = sorted((DATA / "camvid" / "val").glob("*.png"))[:12]
    path = tmp_path_factory.mktemp("clips") / "street.mp4"
    return write_clip(path, [np.asarray(Image.open(p).convert("RGB")) for p in photos])


def lines(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text().splitlines()]


def test_a_video_file_gives_one_line_per_frame_and_a_playable_annotated_mp4(street, tmp_path, capsys):
    assert main(["predict", str(SEGMENTER), str(street), "--out", str(tmp_path), "--threads", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"{street}: 12 frames") and "fps end to end, engine" in last
    rows = lines(tmp_path / "street.jsonl")
    assert [r["frame"] for r in rows] == list(range(12))
    assert [r["time_s"] for r in rows] == pytest.approx([i / 10 for i in range(12)])
    assert video_info(tmp_path / "street.mp4") == (12, 480, 360, 10.0)
    # each frame's result is the image path's on the same decoded frame
    from mnv2.deploy.runtime.predict import Predictor

    p = Predictor.open(SEGMENTER, threads=1)
    want = p.predict_images(decoded(street))
    for r, w in zip(rows, want):
        assert r["fractions"] == w["fractions"] and (r["width"], r["height"]) == (w["width"], w["height"])


def test_vid_stride_and_no_video(street, tmp_path, capsys):
    argv = ["predict", str(CLASSIFIER), str(street), "--out", str(tmp_path), "--threads", "1", "--vid-stride", "3"]
    assert main([*argv, "--no-video"]) == 0
    assert [r["frame"] for r in lines(tmp_path / "street.jsonl")] == [0, 3, 6, 9]
    assert not (tmp_path / "street.mp4").exists()
    assert main(argv) == 0
    n, w, h, fps = video_info(tmp_path / "street.mp4")
    assert (n, w, h) == (4, 480, 360) and fps == pytest.approx(10 / 3, abs=0.01)


class _MJPEG(http.server.BaseHTTPRequestHandler):
    """An MJPEG camera on 127.0.0.1: ``frames`` JPEGs at 20 fps per connection, then the connection is cut; after
    ``server.connections`` connections it refuses to serve (the camera is gone)."""

    def do_GET(self):
        self.server.served += 1
        if self.server.served > self.server.connections:
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for i in range(self.server.frames):
                j = self.server.jpegs[i % len(self.server.jpegs)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(j))
                self.wfile.write(j + b"\r\n")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *_):
        pass


@pytest.fixture
def mjpeg_camera():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _MJPEG)
    server.jpegs = []
    for p in sorted((DATA / "raccoon" / "images").glob("*.jpg"))[:8]:
        b = io.BytesIO()
        Image.open(p).convert("RGB").resize((320, 240)).save(b, "JPEG")
        server.jpegs.append(b.getvalue())
    server.served, server.connections, server.frames = 0, 2, 30
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/cam.mjpg"
    server.shutdown()


def test_a_live_stream_cut_mid_way_reconnects_then_gives_up_with_valid_outputs(mjpeg_camera, tmp_path, capsys):
    """The camera sends 30 frames, cuts, serves once more, then is gone: the job reconnects (said on stderr), gives
    up after --max-reconnects with one error line and exit 2, and keeps a JSONL of whole lines and a playable mp4
    with one frame per line; frame numbers grow (a live source's dropped frames are the gaps)."""
    _, url = mjpeg_camera
    argv = ["predict", str(DETECTOR), url, "--out", str(tmp_path), "--threads", "1", "--max-reconnects", "2"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "stream lost" in err and "reconnecting in 1 s (attempt 1 of 2)" in err
    assert err.strip().splitlines()[-1].startswith("mnv2: error:") and "gave up after 2 reconnect" in err
    summary = out.strip().splitlines()[-1]
    assert "frames" in summary and "latency p50" in summary and "2 reconnect(s)" in summary
    rows = lines(tmp_path / "cam.jsonl")
    frames = [r["frame"] for r in rows]
    assert len(rows) >= 10 and frames == sorted(set(frames)) and all("detections" in r for r in rows)
    assert video_info(tmp_path / "cam.mp4")[:3] == (len(rows), 320, 240)


def test_sigterm_mid_file_closes_valid_outputs(tmp_path):
    photos = sorted((DATA / "raccoon" / "images").glob("*.jpg"))[:10]
    frames = [np.asarray(Image.open(p).convert("RGB").resize((320, 240))) for p in photos] * 30  # 300 frames
    clip = write_clip(tmp_path / "long.mp4", frames, fps=25)
    mnv2 = Path(sys.executable).parent / "mnv2"
    out = tmp_path / "out"
    proc = subprocess.Popen([str(mnv2), "predict", str(DETECTOR), str(clip), "--out", str(out), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "long.jsonl").exists():
        time.sleep(0.05)
    while time.time() < deadline and (out / "long.jsonl").read_text().count("\n") < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM" in stdout
    rows = lines(out / "long.jsonl")
    assert 20 <= len(rows) < 300 and [r["frame"] for r in rows] == list(range(len(rows)))
    assert video_info(out / "long.mp4")[:3] == (len(rows), 320, 240)


def _bad_sources(tmp_path: Path, street: Path) -> dict[str, tuple[str, str]]:
    (tmp_path / "notes.mp4").write_text("not a video at all")
    data = street.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with av.open(str(tmp_path / "empty.mp4"), "w") as c:  # an mp4 whose video got no frame
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    return {
        "not-a-video": (str(tmp_path / "notes.mp4"), "cannot be opened as a video"),
        "truncated": (str(tmp_path / "cut.mp4"), "cannot be opened as a video"),
        "unreachable": (f"http://127.0.0.1:{free_port()}/cam.mjpg", "cannot be opened as a video"),
        "no-camera": ("/dev/video97", "camera '/dev/video97' does not exist"),
        "zero-frames": (str(tmp_path / "empty.mp4"), "has no video"),
        "missing": (str(tmp_path / "none.mp4"), "does not exist"),
    }


@pytest.mark.parametrize("case", ["not-a-video", "truncated", "unreachable", "no-camera", "zero-frames", "missing"])
def test_a_bad_video_source_is_one_line_and_leaves_nothing(case, street, tmp_path, capsys):
    source, needle = _bad_sources(tmp_path, street)[case]
    out = tmp_path / "out"
    assert main(["predict", str(CLASSIFIER), source, "--out", str(out), "--threads", "1"]) == 2
    err = [t for t in capsys.readouterr().err.splitlines() if t.strip()]
    assert len(err) == 1 and err[0].startswith("mnv2: error:") and needle in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_the_python_api_streams_results_that_plot_and_save(street, tmp_path):
    import mnv2

    results = mnv2.predict(DETECTOR, street, stream=True, threads=1, vid_stride=4)
    assert not isinstance(results, list)
    got = list(results)
    assert [r["frame"] for r in got] == [0, 4, 8] and all(r["source"] == str(street) for r in got)
    assert got[0].plot().shape == (360, 480, 3) and got[0].to_json()["time_s"] == 0.0
    assert Image.open(got[1].save(tmp_path / "f4.png")).size == (480, 360)
    folder = Path(__file__).parent / "fixtures" / "segmentation" / "camvid" / "val"
    photos = mnv2.predict(SEGMENTER, [str(folder)], threads=1)  # a list; a mask plots as an overlay
    assert isinstance(photos, list) and "mask" not in photos[0].to_json() and photos[0].plot().shape == (90, 120, 3)
    with pytest.raises(ConfigError, match="never ends"):
        mnv2.predict(DETECTOR, "/dev/video0")


def test_track_keeps_one_id_for_one_raccoon_panned_across_frames(tmp_path, capsys):
    photo = Image.open(DATA / "raccoon" / "images" / "raccoon-5.jpg").convert("RGB")  # one raccoon
    photo = photo.resize((320, round(320 * photo.height / photo.width)))
    frames = []
    for i in range(15):  # the raccoon crosses the frame, 20 px a frame
        canvas = Image.new("RGB", (640, 480), (110, 120, 100))
        canvas.paste(photo, (20 * i, 100))
        frames.append(np.asarray(canvas))
    clip = write_clip(tmp_path / "pan.mp4", frames)
    argv = ["predict", str(DETECTOR), str(clip), "--out", str(tmp_path), "--threads", "1", "--min-score", "0.5"]
    assert main([*argv, "--track"]) == 0
    rows = lines(tmp_path / "pan.jsonl")
    ids = [d["track_id"] for r in rows for d in r["detections"]]
    assert len(rows) == 15 and len(ids) >= 14 and len(set(ids)) == 1  # one raccoon, one id
    xs = [r["detections"][0]["bbox"][0] for r in rows if r["detections"]]
    assert xs[-1] - xs[0] > 200  # and it moves right with the raccoon
    capsys.readouterr()
    assert main(["predict", str(CLASSIFIER), str(clip), "--out", str(tmp_path / "c"), "--track"]) == 2
    assert "--track follows objects from frame to frame: it is for detection models" in capsys.readouterr().err
