"""Archive-scale inference jobs (issue 27, 1): ``mnv2 predict MODEL DIR... --out results.jsonl``.

One JSON line per image, appended as soon as its batch is done, so a job over millions of images holds one batch in
memory, not its results. The file is the job's state: running the same command again reads it, skips the images it
already holds and appends the rest; a last line torn by a crash (SIGKILL, power) is cut off first, so nothing is
duplicated or lost. An image that cannot be read gets its line too, with ``"error"`` in place of results. Decoding
and preprocessing run in threads ahead of the engine (Pillow and numpy release the GIL), so the engine stays busy.

Each line: ``root`` (the input as given), ``path`` (relative to it), ``width``, ``height`` and the task's result
fields (``to_json``), or ``error``. A summary (done, failed, skipped as already there) is printed and written beside
the file as ``<file>.summary.json``. Numpy and Pillow only: the runtime install runs jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnv2.data.images import IMAGE_EXTENSIONS, ImageError, load_image
from mnv2.errors import ConfigError
from mnv2.ops import DEFAULT_OVERLAP

SUMMARY_SUFFIX = ".summary.json"
JOB_SUFFIX = ".jsonl"


@dataclass
class JobSummary:
    """What one run of a job did. ``skipped``: images the file already held (an earlier run's)."""

    out: str
    done: int = 0
    failed: int = 0
    skipped: int = 0
    lines: int = 0
    repaired_torn_line: bool = False
    seconds: float = 0.0
    images_per_s: float = 0.0

    def line(self) -> str:
        torn = "; repaired a torn last line" if self.repaired_torn_line else ""
        return (f"{self.out}: {self.done} done, {self.failed} failed, {self.skipped} skipped (already in the file); "
                f"{self.lines} lines; {self.images_per_s:.1f} img/s{torn}")  # fmt: skip


def walk(inputs: list[str]) -> Iterator[tuple[str, str, Path]]:
    """``(root, relative path, path)`` of every image under ``inputs`` (directories recursively, sorted; a file is
    its own root's), lazily: a million files are never listed at once."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for name in sorted(filenames):
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        f = Path(dirpath) / name
                        yield item, f.relative_to(p).as_posix(), f
        elif p.is_file():
            yield item, p.name, p
        else:
            raise ConfigError(f"{item!r} is neither an image file nor a directory")


def read_done(path: Path) -> tuple[set[tuple[str, str]], int, bool]:
    """The ``(root, path)`` keys a results file holds, its line count, and whether a torn last line was cut off
    (in place: the file then ends after its last complete line)."""
    done: set[tuple[str, str]] = set()
    if not path.exists():
        return done, 0, False
    keep = _complete_length(path)
    torn = keep != path.stat().st_size
    if torn:  # a crash mid-line: keep what ends in a newline
        try:
            os.truncate(path, keep)
        except OSError as e:
            raise ConfigError(f"cannot repair the torn last line of {str(path)!r}: {e.strerror or e}") from None
    lines = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                row = json.loads(raw.decode("utf-8"))
                done.add((row["root"], row["path"]))
            except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
                raise ConfigError(f"{str(path)!r} line {n} is not a result line of an mnv2 job; give another --out "
                                  "(a job continues only its own results file)") from None  # fmt: skip
            lines += 1
    return done, lines, torn


def _complete_length(path: Path, chunk: int = 1 << 20) -> int:
    """The length of ``path`` up to and including its last newline, read from the end (a results file of millions
    of lines is not read whole for this)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                return start + i + 1
            pos = start
        return 0


def _decode(predictor, path: Path, prepare: bool) -> tuple[Any, Any] | str:
    try:
        im = load_image(path)
        return im, predictor.prepare(im) if prepare else None
    except ImageError as e:
        return str(e)


class _ResultsFile:
    """The job's results file, opened for appending whole lines: a write that fails (read-only, disk full) cuts the
    file back to its last complete line and is one :class:`ConfigError`."""

    def __init__(self, out: Path, summary: JobSummary) -> None:
        self.out, self.summary = out, summary
        try:  # unbuffered: a failed write must leave nothing behind in a buffer that closing would flush
            self.f = open(out, "ab", buffering=0)  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise ConfigError(f"cannot write the results file {str(out)!r}: {e.strerror or e}") from None
        self.good = self.f.tell()

    def write(self, lines: list[str]) -> None:
        data = memoryview("".join(line + "\n" for line in lines).encode())
        try:
            while data:  # a raw write may take part of the bytes
                data = data[self.f.write(data) :]
            self.good = self.f.tell()
        except OSError as e:
            with contextlib.suppress(OSError):  # leave the file as it was before this batch: whole lines only
                os.truncate(self.out, self.good)
            raise ConfigError(
                f"cannot write the results file {str(self.out)!r}: {e.strerror or e}; it holds "
                f"{self.summary.lines} complete lines, and the same command continues it"
            ) from None
        self.summary.lines += len(lines)

    def close(self) -> None:
        self.f.close()


def _line(row: dict) -> str:
    return json.dumps(row, separators=(",", ":"), allow_nan=False)


def _row(predictor, root: str, rel: str, image, result: dict) -> dict:
    return {"root": root, "path": rel, "width": image.width, "height": image.height,
            **predictor.inference.to_json(result)}  # fmt: skip


def predict_rows(predictor, items: list[tuple[str, str, str]], *, tile: int | None = None,
                 overlap: float = DEFAULT_OVERLAP, **options: Any) -> list[dict]:  # fmt: skip
    """A job's rows for ``items`` (``(root, relative path, file)``), in order: decoded, batched by shape, run and
    answered; an unreadable file gets its ``error`` row. What each Ray actor runs (:class:`RayPredictor`)."""
    rows: list[dict | None] = [None] * len(items)
    pending: list[tuple[int, Any, Any]] = []

    def flush() -> None:
        if pending:
            found = predictor.results(predictor.run([x for *_, x in pending]), [im for _, im, _ in pending], **options)
            for (i, im, _), r in zip(pending, found):
                rows[i] = _row(predictor, items[i][0], items[i][1], im, r)
            pending.clear()

    for i, (root, rel, path) in enumerate(items):
        decoded = _decode(predictor, Path(path), tile is None)
        if isinstance(decoded, str):
            rows[i] = {"root": root, "path": rel, "error": decoded}
            continue
        im, x = decoded
        if tile is not None:
            rows[i] = _row(predictor, root, rel, im, predictor.predict_tiled(im, tile, overlap, **options))
            continue
        if pending and (pending[0][2].shape != x.shape or len(pending) >= predictor.inference.batch_size):
            flush()
        pending.append((i, im, x))
    flush()
    return rows  # type: ignore[return-value]


class RayPredictor:
    """A Ray Data batch UDF with state: one model engine per actor (``ds.map_batches(RayPredictor, concurrency=N,
    fn_constructor_kwargs={"model": ...})``). Takes batches with ``root``, ``path`` (relative) and ``file`` columns and
    returns ``line`` (each image's JSON line, as a job writes it) and ``failed``. A user's own Ray pipeline can call it
    as ``mnv2 predict --ray`` does."""

    def __init__(self, model: str, engine: str | None = None, threads: int | None = None, tile: int | None = None,
                 overlap: float = DEFAULT_OVERLAP, **options: Any) -> None:  # fmt: skip
        from mnv2.deploy.runtime.predict import Predictor

        self.predictor = Predictor.open(model, engine, threads=threads)
        self.options = self.predictor.check_options(options)
        self.tile, self.overlap = tile, overlap

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        items = list(zip(batch["root"].tolist(), batch["path"].tolist(), batch["file"].tolist()))
        rows = predict_rows(self.predictor, items, tile=self.tile, overlap=self.overlap, **self.options)
        return {"line": np.array([_line(r) for r in rows], dtype=object),
                "failed": np.array(["error" in r for r in rows])}  # fmt: skip


def run_job(
    predictor, inputs: list[str], out: str | Path, *, batch_size: int | None = None, decode_threads: int = 2,
    progress: bool = True, tile: int | None = None, overlap: float = DEFAULT_OVERLAP, ray: str | None = None,
    **options: Any,
) -> JobSummary:  # fmt: skip
    """Run ``predictor`` (:class:`mnv2.deploy.runtime.predict.Predictor`) over every image under ``inputs``, appending
    one line per image to ``out`` and continuing what ``out`` already holds. ``ray``: a Ray cluster's address (``auto``:
    the one this machine belongs to; ``local``: one started for this job on loopback) on whose actors the model runs
    (:class:`RayPredictor`), the lines coming back in the local order. Returns the :class:`JobSummary` (also written
    to ``<out>.summary.json``). A results file that cannot be written (read-only, disk full) is a
    :class:`ConfigError` with the file cut back to its last complete line."""
    from tqdm.auto import tqdm

    out = Path(out)
    options = predictor.check_options(options)
    predictor.check_tiles(tile, overlap)
    batch_size = batch_size or predictor.inference.batch_size
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a directory; a job's results go to a .jsonl file")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    done, lines, torn = read_done(out)
    summary = JobSummary(str(out), skipped=0, lines=lines, repaired_torn_line=torn)
    total = sum(1 for _ in walk(inputs))
    if total == 0:
        raise ConfigError(f"no image files found in {', '.join(inputs)}")
    results = _ResultsFile(out, summary)
    bar = tqdm(total=total, unit="img", desc=out.name, disable=not progress, smoothing=0.05)
    t0 = time.perf_counter()

    def todo() -> Iterator[tuple[str, str, Path]]:
        for root, rel, path in walk(inputs):
            if (root, rel) in done:
                summary.skipped += 1
                bar.update()
            else:
                yield root, rel, path

    try:
        if ray is not None:
            _run_on_ray(ray, predictor.source, predictor.engine.name, list(todo()), results, summary, bar, batch_size,
                        tile=tile, overlap=overlap, **options)  # fmt: skip
        else:
            _run_here(predictor, todo(), results, summary, bar, batch_size, decode_threads, tile, overlap, options)
    finally:
        bar.close()
        results.close()
        summary.seconds = time.perf_counter() - t0
        summary.images_per_s = (summary.done + summary.failed) / summary.seconds if summary.seconds else 0.0
        _write_summary(out, summary)
    return summary


def _run_here(predictor, items, results, summary, bar, batch_size, decode_threads, tile, overlap, options) -> None:
    """The local job: decoding threads ahead of the engine, one batch of rows written at a time."""
    pending: list[tuple[str, str, Any, Any]] = []

    def flush() -> None:
        if not pending:
            return
        found = predictor.results(predictor.run([x for *_, x in pending]), [im for *_, im, _ in pending], **options)
        results.write([_line(_row(predictor, root, rel, im, r)) for (root, rel, im, _), r in zip(pending, found)])
        summary.done += len(pending)
        bar.update(len(pending))
        pending.clear()

    with ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="mnv2-decode") as pool:
        ahead: deque = deque()
        window = max(2 * batch_size, 2 * decode_threads)
        try:
            while True:
                while len(ahead) < window and (item := next(items, None)) is not None:
                    ahead.append((item, pool.submit(_decode, predictor, item[2], tile is None)))
                if not ahead:
                    break
                (root, rel, _), future = ahead.popleft()
                decoded = future.result()
                if isinstance(decoded, str):  # unreadable: its own line, in order with the others
                    flush()
                    results.write([_line({"root": root, "path": rel, "error": decoded})])
                    summary.failed += 1
                    bar.update()
                    continue
                im, x = decoded
                if tile is not None:  # one image's tiles are a batch of their own
                    flush()
                    r = predictor.predict_tiled(im, tile, overlap, **options)
                    results.write([_line(_row(predictor, root, rel, im, r))])
                    summary.done += 1
                    bar.update()
                    continue
                if pending and (pending[0][3].shape != x.shape or len(pending) >= batch_size):
                    flush()
                pending.append((root, rel, im, x))
            flush()
        finally:
            for _, future in ahead:
                future.cancel()


def _run_on_ray(address, model, engine, items, results, summary, bar, batch_size, **kwargs) -> None:
    """The same job on a Ray cluster: ``read`` (the file list) -> ``map_batches`` with :class:`RayPredictor`
    actors, as many as the cluster's CPUs allow -> the lines, in order, appended here."""
    # "local" starts a one-machine cluster for this job; it and a loopback address stay on loopback (Ray otherwise
    # swaps 127.0.0.1 for this machine's network address, read before ray is imported)
    loopback = address == "local" or address.split(":")[0] in ("127.0.0.1", "localhost")
    if loopback:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray Data: pip install 'mnv2[ray]'") from None
    if not items:
        return
    import logging

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if not ray.is_initialized():
        here = {"_node_ip_address": "127.0.0.1"} if loopback else {}
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR", **here)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--ray {address!r}: no Ray cluster there ({' '.join(str(e).split())[:200]})") from None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the file reads as the local job's would
    ctx.enable_progress_bars = False
    actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_items([{"root": r, "path": p, "file": str(f)} for r, p, f in items])
    ds = ds.map_batches(
        RayPredictor, batch_size=batch_size, concurrency=(1, actors), num_cpus=1, batch_format="numpy",
        fn_constructor_kwargs={"model": str(model), "engine": engine, "threads": 1, **kwargs},
    )  # fmt: skip
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        lines = batch["line"].tolist()
        results.write(lines)
        failed = int(batch["failed"].sum())
        summary.failed += failed
        summary.done += len(lines) - failed
        bar.update(len(lines))


def _write_summary(out: Path, summary: JobSummary) -> None:
    side = out.with_name(out.name + SUMMARY_SUFFIX)
    tmp = side.with_name(side.name + ".tmp")
    try:
        tmp.write_text(json.dumps(asdict(summary), indent=1) + "\n")
        os.replace(tmp, side)
    except OSError:  # the results file is what matters; a summary that cannot be written is not fatal
        tmp.unlink(missing_ok=True)
