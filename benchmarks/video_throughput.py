"""Video throughput (issue 26): each task's example model on a 640x480 clip made of real photos, per engine.

For every (model, engine) it measures, in one run and one process at a time:
  - offline: the engine's throughput on the clip's prepared frames at the task's video batch (the inference half's
    ``batch_size``), inputs already in memory (what ``mnv2 bench`` times);
  - ``mnv2 predict MODEL clip.mp4 --no-video`` and ``--out`` with the annotated mp4: end-to-end frames/s (decode,
    preprocess, engine, results, JSONL; and drawing + H.264 encoding);
  - the cost per frame of decoding alone, drawing alone and encoding alone;
  - a live MJPEG source on 127.0.0.1 at 10 fps: capture-to-result latency p50/p99.

    .venv/bin/python benchmarks/video_throughput.py [--frames 120] [--engines torch onnxruntime]
"""

from __future__ import annotations

import argparse
import http.server
import io
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mnv2.deploy.runtime.predict import Predictor
from mnv2.deploy.runtime.video import iter_frames, run_video

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODELS = {
    "classification": ROOT / "examples" / "models" / "fashion_mnist_mnv2.safetensors",
    "detection": ROOT / "examples" / "models" / "raccoon_ssdlite_mnv2.safetensors",
    "segmentation": ROOT / "examples" / "models" / "camvid_deeplabv3_mnv2.safetensors",
}


def make_clip(path: Path, frames: int) -> Path:
    photos = (
        sorted((DATA / "camvid" / "val").glob("*.png"))[: frames // 2]
        + sorted((DATA / "raccoon" / "images").glob("*.jpg"))[: frames - frames // 2]
    )
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
        for p in photos:
            rgb = np.asarray(Image.open(p).convert("RGB").resize((640, 480)))
            out.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(s.encode(None))
    return path


def export(model: Path, engine: str, tmp: Path) -> Path:
    if engine == "torch":
        return model
    from mnv2.deploy import ExportOptions
    from mnv2.deploy import export as do_export

    fmt = "onnx" if engine == "onnxruntime" else "tflite"
    out = tmp / f"{model.stem}.{fmt}"
    if not out.exists():  # as `mnv2 export` writes it: ONNX with a free batch, TFLite at batch 1
        do_export(model, out, fmt, ExportOptions(dynamic_batch=fmt == "onnx"))
    return out


def offline_fps(p: Predictor, frames: list, batch: int, repeats: int = 3) -> float:
    xs = [p.prepare(im) for im in frames]
    p.run(xs[:batch])  # warm
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(xs), batch):
            p.run(xs[i : i + batch])
        best = max(best, len(xs) / (time.perf_counter() - t0))
    return best


def costs(p: Predictor, clip: Path, frames: list) -> tuple[float, float, float]:
    """ms per frame: decoding (to RGB images), drawing the results, encoding H.264."""
    t0 = time.perf_counter()
    with av.open(str(clip)) as c:
        n = sum(1 for f in c.decode(c.streams.video[0]) if f.to_image() is not None)
    decode = 1000 * (time.perf_counter() - t0) / n
    results = p.predict_images(frames[:8])
    t0 = time.perf_counter()
    drawn = [np.asarray(p.inference.draw(im, r, p.info)) for im, r in zip(frames[:8], results)]
    draw = 1000 * (time.perf_counter() - t0) / len(drawn)
    with tempfile.TemporaryDirectory() as tmp, av.open(str(Path(tmp) / "e.mp4"), "w") as out:
        s = out.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "23"})
        s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
        t0 = time.perf_counter()
        for _ in range(4):
            for d in drawn:
                out.mux(s.encode(av.VideoFrame.from_ndarray(d, format="rgb24")))
        out.mux(s.encode(None))
        encode = 1000 * (time.perf_counter() - t0) / (4 * len(drawn))
    return decode, draw, encode


class _MJPEG(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for i in range(self.server.count):
                j = self.server.jpegs[i % len(self.server.jpegs)]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(j))
                self.wfile.write(j + b"\r\n")
                time.sleep(0.1)
        except OSError:
            pass

    def log_message(self, *_):
        pass


def live_latency(p: Predictor, frames: list, seconds: float) -> tuple[float, float, int, int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MJPEG)
    server.jpegs = []
    for im in frames[:20]:
        b = io.BytesIO()
        im.save(b, "JPEG", quality=85)
        server.jpegs.append(b.getvalue())
    server.count = int(seconds * 10)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cam.mjpg"
    lat = []
    n = 0
    try:
        for frame, _ in iter_frames(p, url, max_reconnects=0, log=lambda _: None):
            lat.append(1000 * (time.perf_counter() - frame.captured))
            n = frame.index + 1
    except Exception:  # the camera's end: the stream is lost for good after max_reconnects=0
        pass
    server.shutdown()
    p50, p99 = np.percentile(lat, [50, 99])
    return float(p50), float(p99), len(lat), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--engines", nargs="+", default=["torch", "onnxruntime"])
    ap.add_argument("--tasks", nargs="+", default=list(MODELS))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--live-seconds", type=float, default=10.0)
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} engine threads, PyAV {av.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.mp4", args.frames)
        with av.open(str(clip)) as c:
            frames = [f.to_image() for f in c.decode(c.streams.video[0])]
        print(f"clip: {len(frames)} frames of 640x480 at 25 fps (CamVid and raccoon photos)")
        print(
            "| task | engine | batch | offline img/s | --no-video fps | of offline | with mp4 fps | of offline | "
            "decode ms | draw ms | encode ms | live p50 / p99 ms (processed of sent) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for task in args.tasks:
            for engine in args.engines:
                model = export(MODELS[task], engine, tmp)
                p = Predictor.open(model, engine, threads=args.threads)
                batch = p.inference.batch_size
                off = offline_fps(p, frames, batch)
                runs = {}
                for video in (False, True):
                    s = run_video(p, str(clip), tmp / f"out-{task}-{engine}", video=video, progress=False)
                    runs[video] = s.fps
                decode, draw, encode = costs(p, clip, frames)
                p50, p99, done, sent = live_latency(p, frames, args.live_seconds)
                print(f"| {task} | {engine} | {batch} | {off:.1f} | {runs[False]:.1f} | {runs[False] / off:.0%} | "
                      f"{runs[True]:.1f} | {runs[True] / off:.0%} | {decode:.1f} | {draw:.1f} | {encode:.1f} | "
                      f"{p50:.0f} / {p99:.0f} ({done} of {sent}) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
