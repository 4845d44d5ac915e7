"""Video files, cameras and streams (issue 26): ``mnv2 predict MODEL clip.mp4|/dev/video0|rtsp://...|http://...``.

Three threads overlap so the engine never waits for the file or the screen: a reader decodes (PyAV, FFmpeg's
decoders, ``mnv2[video]``) and prepares frames, the caller's thread runs the engine and the task's results (the one
inference path of ``mnv2.deploy.runtime.predict``), and a writer appends ``<stem>.jsonl`` (one JSON object per processed
frame: ``frame``, ``time_s`` and the image path's result fields) and encodes ``<stem>.mp4`` (the results drawn; H.264,
the source's size and rate).

Real-time policy. A file is processed frame by frame (``vid_stride`` takes every Nth), in batches. A live source (a
camera, a network stream) is never allowed to fall behind: the reader keeps only the newest frame, so when the engine
is slower than the camera the stale frames are dropped (the JSONL's ``frame`` numbers show which were processed); a
lost stream is reopened with back-off (1, 2, 4 ... s) up to ``max_reconnects`` times, each attempt said on stderr.
SIGTERM or Ctrl-C ends the job with both outputs closed and valid (a playable mp4, a JSONL of whole lines).

PyAV over OpenCV: one wheel reads every source named here (files, V4L2 cameras, RTSP, HTTP MJPEG and HLS) and
writes H.264 (libx264), exposes each frame's timestamp, and installs from PyPI with no system step (BENCHMARKS.md,
"Video", has its decoding speed).
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mnv2.errors import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".m3u8")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
CAMERA = re.compile(r"/dev/video\d+")
OPEN_TIMEOUT_S = 10.0  # an unreachable stream is an error after this long, not a hang
READ_TIMEOUT_S = 5.0  # a stream that sends nothing this long is lost (then reconnected)
MAX_RECONNECTS = 5
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)


def is_video_source(source: str) -> bool:
    """Whether ``source`` is read as a video: a stream URL, a camera device, or a file with a video extension."""
    s = str(source)
    return (
        s.lower().startswith(STREAM_SCHEMES)
        or bool(CAMERA.fullmatch(s))
        or Path(s).suffix.lower() in (VIDEO_EXTENSIONS)
    )


def is_live(source: str) -> bool:
    """A camera or a network stream: frames come at the source's pace, and the newest one is what matters (a
    stream of known length, HLS VOD, turns out to be a file once opened: every frame is processed)."""
    s = str(source)
    return s.lower().startswith(STREAM_SCHEMES) or bool(CAMERA.fullmatch(s))


def stem_of(source: str) -> str:
    """The outputs' file stem: a file's stem, a camera's device name, a URL's last path part (else its host)."""
    s = str(source)
    if s.lower().startswith(STREAM_SCHEMES):
        rest = s.split("://", 1)[1].split("?")[0].rstrip("/")
        parts = [p for p in rest.split("/") if p]
        name = Path(parts[-1]).stem if len(parts) > 1 else parts[0] if parts else "stream"
    else:
        name = Path(s).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "video"


def _av():
    try:
        import av
    except ImportError:
        raise ConfigError("video sources need PyAV: pip install 'mnv2[video]'") from None
    return av


@dataclass
class Frame:
    """One decoded frame: its 0-based ``index`` in the source (counted across reconnects for a live source), its
    timestamp ``time_s``, the RGB PIL ``image`` and the model's prepared input."""

    index: int
    time_s: float
    image: Any
    x: Any = None
    captured: float = 0.0  # time.perf_counter() when it was decoded (a live source's latency starts here)


@dataclass
class VideoSummary:
    """What one video job did. ``dropped``: live frames the engine was too slow for; ``engine_share``: the fraction of
    the wall time the engine ran."""

    source: str
    frames: int = 0
    dropped: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    engine_share: float = 0.0
    jsonl: str | None = None
    video: str | None = None
    stopped: str | None = None
    reconnects: int = 0
    latency_ms: list[float] | None = None  # live sources: capture (decoded) to result, per processed frame
    error: str | None = None  # why it ended early (a stream lost for good, a file that stops decoding)

    def line(self) -> str:
        outs = ", ".join(p for p in (self.jsonl, self.video) if p)
        extra = f", {self.dropped} dropped (live)" if self.dropped else ""
        extra += f", {self.reconnects} reconnect(s)" if self.reconnects else ""
        stop = f"; stopped by {self.stopped}" if self.stopped else ""
        if self.latency_ms:
            p50, p99 = np.percentile(self.latency_ms, [50, 99])
            extra += f", latency p50 {p50:.0f} ms p99 {p99:.0f} ms"
        return (f"{self.source}: {self.frames} frames{extra}, {self.fps:.1f} fps end to end, engine "
                f"{100 * self.engine_share:.0f} % of the time -> {outs}{stop}")  # fmt: skip


class _Reader(threading.Thread):
    """Decodes ``source`` and prepares its frames: into a bounded queue (a file: every ``stride``-th frame, the
    reader waiting for the engine) or a one-frame slot (live: the newest frame replaces an unconsumed one)."""

    def __init__(self, source: str, prepare: Callable, *, live: bool, stride: int, max_reconnects: int,
                 stop: threading.Event, log: Callable[[str], None], opened=None) -> None:  # fmt: skip
        super().__init__(daemon=True, name="mnv2-video-reader")
        self.source, self.prepare, self.live, self.stride = source, prepare, live, stride
        self.max_reconnects, self.stop, self.log = max_reconnects, stop, log
        self.frames: queue.Queue = queue.Queue(maxsize=1 if live else 32)
        self.error: BaseException | None = None
        self.dropped = self.reconnects = 0
        self.fps: float | None = None
        self.container = opened

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # handed to the consumer, raised there
            self.error = e
        finally:
            self._put(None)

    def _put(self, item) -> None:
        if self.live and item is not None:
            with contextlib.suppress(queue.Empty):  # the newest frame wins: an unconsumed older one is dropped
                self.frames.get_nowait()
                self.dropped += 1
            self.frames.put(item)
            return
        while not self.stop.is_set() or item is None:
            try:
                self.frames.put(item, timeout=0.1)
                return
            except queue.Full:
                if item is None and self.stop.is_set():  # stopping: the end marker must arrive, make room for it
                    with contextlib.suppress(queue.Empty):
                        self.frames.get_nowait()

    def _run(self) -> None:
        index = 0
        while not self.stop.is_set():
            container = self.container or open_container(self.source)
            self.container = None
            try:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                if stream.average_rate:
                    self.fps = float(stream.average_rate)
                for frame in container.decode(stream):
                    if self.stop.is_set():
                        return
                    if index % self.stride == 0:
                        t = float(frame.time) if frame.time is not None else index / (self.fps or 25.0)
                        captured = time.perf_counter()
                        image = frame.to_image()
                        self._put(Frame(index, t, image, self.prepare(image), captured))
                    index += 1
                if not self.live:
                    return
                why = "the stream ended"
            except _av().error.FFmpegError as e:
                if not self.live:
                    raise ConfigError(f"{self.source!r}: decoding failed at frame {index} ({_why(e)})") from None
                why = _why(e)
            finally:
                container.close()
            if self.reconnects >= self.max_reconnects:
                raise ConfigError(f"{self.source!r}: stream lost ({why}); gave up after {self.reconnects} reconnect "
                                  "attempt(s)")  # fmt: skip
            wait = BACKOFF_S[min(self.reconnects, len(BACKOFF_S) - 1)]
            self.reconnects += 1
            self.log(f"mnv2: warning: {self.source}: stream lost ({why}); reconnecting in {wait:g} s (attempt "
                     f"{self.reconnects} of {self.max_reconnects})")  # fmt: skip
            deadline = time.monotonic() + wait
            while not self.stop.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            while not self.stop.is_set():
                try:
                    self.container = open_container(self.source)
                    break
                except ConfigError as e:
                    if self.reconnects >= self.max_reconnects:
                        raise ConfigError(f"{self.source!r}: stream lost; gave up after {self.reconnects} reconnect "
                                          f"attempt(s) ({e})") from None  # fmt: skip
                    wait = BACKOFF_S[min(self.reconnects, len(BACKOFF_S) - 1)]
                    self.reconnects += 1
                    self.log(f"mnv2: warning: {self.source}: cannot reopen ({e}); retrying in {wait:g} s (attempt "
                             f"{self.reconnects} of {self.max_reconnects})")  # fmt: skip
                    time.sleep(wait)


def _why(e: BaseException) -> str:
    return " ".join(str(getattr(e, "strerror", None) or e).split())[:200]


def open_container(source: str):
    """Open a video source with PyAV; one :class:`ConfigError` line for a missing file, a file that is not a video,
    a camera that does not exist or a stream that does not answer within :data:`OPEN_TIMEOUT_S`."""
    av = _av()
    s = str(source)
    options: dict[str, str] = {}
    kwargs: dict[str, Any] = {}
    if s.lower().startswith(("rtsp://", "rtsps://")):
        options["rtsp_transport"] = "tcp"
    if is_live(s):
        kwargs["timeout"] = (OPEN_TIMEOUT_S, READ_TIMEOUT_S)
    if CAMERA.fullmatch(s):
        if not Path(s).exists():
            raise ConfigError(f"camera {s!r} does not exist")
        kwargs["format"] = "v4l2"
    elif not is_live(s) and not Path(s).is_file():
        raise ConfigError(f"{s!r} does not exist" if not Path(s).exists() else f"{s!r} is not a file")
    try:
        container = av.open(s, options=options, **kwargs)
    except av.error.FFmpegError as e:
        raise ConfigError(f"{s!r} cannot be opened as a video ({_why(e)})") from None
    except OSError as e:
        raise ConfigError(f"{s!r} cannot be opened as a video ({e.strerror or e})") from None
    if not container.streams.video:
        container.close()
        raise ConfigError(f"{s!r} has no video stream")
    return container


class _Writer(threading.Thread):
    """Appends each processed frame's JSON line and, unless ``video`` is None, encodes the frame with its results
    drawn (H.264 in an mp4, the source's size, even sides for 4:2:0, timestamps from the source)."""

    def __init__(self, jsonl: Path, video: Path | None, draw: Callable, rate: float) -> None:
        super().__init__(daemon=True, name="mnv2-video-writer")
        self.items: queue.Queue = queue.Queue(maxsize=64)
        self.jsonl_path, self.video_path, self.draw, self.rate = jsonl, video, draw, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        av = _av() if self.video_path is not None else None
        out = stream = None
        last_pts, t0_video = -1, None
        with open(self.jsonl_path, "w", encoding="utf-8") as jsonl:
            try:
                while (item := self.items.get()) is not None:
                    frame, row, result = item
                    jsonl.write(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")
                    jsonl.flush()
                    if av is not None:
                        rgb = np.asarray(self.draw(frame.image, result))
                        h, w = rgb.shape[:2]
                        if out is None:
                            out = av.open(str(self.video_path), "w")
                            rate = Fraction(self.rate).limit_denominator(1001)
                            stream = out.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": "23"})
                            stream.width, stream.height = w + w % 2, h + h % 2
                            stream.pix_fmt = "yuv420p"
                            stream.codec_context.time_base = 1 / rate
                        if w % 2 or h % 2:  # 4:2:0 needs even sides: repeat the last row/column
                            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                        t0_video = frame.time_s if t0_video is None else t0_video
                        pts = max(last_pts + 1, round((frame.time_s - t0_video) * self.rate))
                        vf.pts, last_pts = pts, pts
                        for packet in stream.encode(vf):
                            out.mux(packet)
            except BaseException as e:
                self.error = e
                while self.items.get() is not None:  # drain, so the producer never blocks on a dead writer
                    pass
            finally:
                if out is not None:
                    for packet in stream.encode(None):
                        out.mux(packet)
                    out.close()


def iter_frames(predictor, source: str, *, vid_stride: int = 1, max_reconnects: int = MAX_RECONNECTS,
                track: bool = False, stop: threading.Event | None = None, log=None,
                **options) -> Iterator[tuple[Frame, dict]]:  # fmt: skip
    """``(frame, result)`` of every processed frame of ``source`` with ``predictor``: files batch by batch, live
    sources one newest frame at a time; ``track``: each object's ``track_id`` (the task's tracker). ``stop`` ends it
    early (the reader closes its source)."""
    job = _Job(predictor, source, vid_stride, max_reconnects, stop or threading.Event(), log, options, track)
    yield from job.frames()


class _Job:
    def __init__(self, predictor, source, stride, max_reconnects, stop, log, options, track=False) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"--vid-stride must be an integer >= 1, got {stride!r}")
        if isinstance(max_reconnects, bool) or not isinstance(max_reconnects, int) or max_reconnects < 0:
            raise ConfigError(f"--max-reconnects must be an integer >= 0, got {max_reconnects!r}")
        self.p, self.source, self.stop = predictor, str(source), stop
        self.options = predictor.check_options(options)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        opened = open_container(self.source)  # before any output exists: a bad source leaves nothing behind
        # a stream of known length (HLS VOD, a video over HTTP) is a file that arrives by network: every frame
        self.live = is_live(self.source) and not opened.duration
        self.reader = _Reader(self.source, predictor.prepare, live=self.live, stride=stride,
                              max_reconnects=max_reconnects, stop=stop, log=self.log, opened=opened)  # fmt: skip
        self.engine_s = 0.0
        self.rate_hint = float(opened.streams.video[0].average_rate or 25.0)
        self.track = None
        if track:
            if predictor.inference.tracker is None:
                opened.close()
                raise ConfigError(f"--track follows objects from frame to frame: it is for detection models, not "
                                  f"{predictor.inference.name}")  # fmt: skip
            self.track = predictor.inference.tracker(self.rate_hint / (1 if self.live else stride))

    def _batches(self) -> Iterator[list[Frame]]:
        """The reader's frames in batches: a file's up to the task's batch (of one size; a frame of another size
        starts the next), a live source's one newest frame at a time; what is there when the reader lags. Nothing
        after a stop: the reader may drop a queued frame to deliver its end marker."""
        batch = 1 if self.live else self.p.inference.batch_size
        carry: Frame | None = None
        done = False
        while not done:
            pending: list[Frame] = [carry] if carry is not None else []
            carry = None
            while len(pending) < batch:
                try:
                    item = self.reader.frames.get(timeout=0.1 if pending else None)
                except queue.Empty:  # the reader is slower than the engine: run what we have
                    break
                if self.stop.is_set():  # stopping: the frames still queued are not run (the outputs end in order)
                    return
                if item is None:
                    done = True
                    break
                if pending and item.x.shape != pending[0].x.shape:
                    carry = item
                    break
                pending.append(item)
            if pending:
                yield pending

    def _engine(self, ran: queue.Queue) -> None:
        """The engine's thread: runs batch after batch and hands the outputs on, so the task's results (NMS, a
        mask's resize) and tracking of one batch run while the engine computes the next."""
        try:
            for pending in self._batches():
                if self.stop.is_set():
                    return
                t0 = time.perf_counter()
                outputs = self.p.run([f.x for f in pending])
                self.engine_s += time.perf_counter() - t0
                while not self.stop.is_set():
                    try:
                        ran.put((pending, outputs), timeout=0.1)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # raised in the consumer
            self.engine_error = e
        finally:
            with contextlib.suppress(queue.Full):
                ran.put(None, timeout=1.0 if not self.stop.is_set() else 0.0)

    def frames(self) -> Iterator[tuple[Frame, dict]]:
        self.reader.start()
        ran: queue.Queue = queue.Queue(maxsize=2)  # engine outputs waiting for their results
        self.engine_error: BaseException | None = None
        engine = threading.Thread(target=self._engine, args=(ran,), daemon=True, name="mnv2-video-engine")
        engine.start()
        try:
            while (item := ran.get()) is not None:
                pending, outputs = item
                found = self.p.results(outputs, [f.image for f in pending], **self.options)
                if self.track is not None:  # in frame order, one frame at a time
                    found = [self.track(r) for r in found]
                yield from zip(pending, found)
            for error in (self.engine_error, self.reader.error):
                if error is not None:
                    raise error
        finally:
            self.stop.set()
            while engine.is_alive() or self.reader.is_alive():  # unblock both, then let the reader close its source
                with contextlib.suppress(queue.Empty):
                    ran.get(timeout=0.02)
                with contextlib.suppress(queue.Empty):
                    self.reader.frames.get(timeout=0.02)


def run_video(
    predictor, source: str, out_dir: str | Path, *, video: bool = True, vid_stride: int = 1,
    max_reconnects: int = MAX_RECONNECTS, track: bool = False, progress: bool = True, log=None, **options: Any,
) -> VideoSummary:  # fmt: skip
    """``mnv2 predict MODEL SOURCE --out DIR``: ``DIR/<stem>.jsonl`` and (``video``) ``DIR/<stem>.mp4`` for one video
    source. SIGTERM (in the main thread) and Ctrl-C stop it with both files closed and valid. Returns the summary
    (its :meth:`VideoSummary.line` is the command's last line); a source that fails part-way (a stream lost for
    good) leaves its reason in ``summary.error``, the outputs of the frames done kept and valid."""
    from tqdm.auto import tqdm

    stop = threading.Event()
    job = _Job(predictor, source, vid_stride, max_reconnects, stop, log, options, track)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem_of(source)
    paths = (out / f"{stem}.jsonl", out / f"{stem}.mp4" if video else None)
    summary = VideoSummary(str(source), jsonl=str(paths[0]), video=str(paths[1]) if video else None)
    rate = job.rate_hint / vid_stride if not job.live else job.rate_hint
    writer = _Writer(paths[0], paths[1], lambda im, r: predictor.inference.draw(im, r, predictor.info), rate)
    total = None
    if not job.live:
        s = job.reader.container.streams.video[0]
        total = math.ceil(s.frames / vid_stride) if s.frames else None
    bar = tqdm(total=total, unit="frame", desc=stem, disable=not progress, smoothing=0.1)
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, lambda *_: (setattr(summary, "stopped", "SIGTERM"), stop.set()))
    writer.start()
    latencies: list[float] = []
    t_start = time.perf_counter()
    try:
        for frame, result in job.frames():
            if writer.error is not None:
                break
            row = {"frame": frame.index, "time_s": round(frame.time_s, 6), **predictor.inference.to_json(result)}
            writer.items.put((frame, row, result))
            summary.frames += 1
            if job.live:
                latencies.append(1000 * (time.perf_counter() - frame.captured))
            bar.update()
    except KeyboardInterrupt:
        summary.stopped = "Ctrl-C"
    except ConfigError as e:  # the source failed part-way: what was done is kept, closed and valid
        summary.error = str(e)
    finally:
        stop.set()
        bar.close()
        writer.items.put(None)
        writer.join()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        summary.seconds = time.perf_counter() - t_start
    if writer.error is not None:
        raise ConfigError(f"cannot write the outputs in {str(out)!r}: {writer.error}") from None
    if summary.frames == 0:  # nothing to keep: no half-written outputs
        for p in paths:
            if p is not None:
                p.unlink(missing_ok=True)
        raise ConfigError(summary.error or f"{source!r} has no video frames")
    summary.dropped, summary.reconnects = job.reader.dropped, job.reader.reconnects
    summary.fps = summary.frames / summary.seconds if summary.seconds else 0.0
    summary.engine_share = job.engine_s / summary.seconds if summary.seconds else 0.0
    summary.latency_ms = latencies or None
    return summary
