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
from mnv2.tasks.infer.tiles import DEFAULT_OVERLAP

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
    torn = False
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(max(0, size - 1))
            if f.read(1) != b"\n":  # a crash mid-line: keep what ends in a newline
                f.seek(0)
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
                torn = True
    lines = 0
    with open(path, encoding="utf-8", errors="strict") as f:
        for n, text in enumerate(f, 1):
            try:
                row = json.loads(text)
                done.add((row["root"], row["path"]))
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{str(path)!r} line {n} is not a result line of an mnv2 job; give another --out "
                                  "(a job continues only its own results file)") from None  # fmt: skip
            lines += 1
    return done, lines, torn


def _decode(predictor, path: Path, prepare: bool) -> tuple[Any, Any] | str:
    try:
        im = load_image(path)
        return im, predictor.prepare(im) if prepare else None
    except ImageError as e:
        return str(e)


def run_job(
    predictor, inputs: list[str], out: str | Path, *, batch_size: int | None = None, decode_threads: int = 2,
    progress: bool = True, tile: int | None = None, overlap: float = DEFAULT_OVERLAP, **options: Any,
) -> JobSummary:  # fmt: skip
    """Run ``predictor`` (:class:`mnv2.deploy.predict.Predictor`) over every image under ``inputs``, appending one
    line per image to ``out`` and continuing what ``out`` already holds. Returns the :class:`JobSummary` (also
    written to ``<out>.summary.json``). A results file that cannot be written (read-only, disk full) is a
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
    try:  # unbuffered: a failed write must leave nothing behind in a buffer that closing would flush
        f = open(out, "ab", buffering=0)  # noqa: SIM115 (closed in the finally below)
    except OSError as e:
        raise ConfigError(f"cannot write the results file {str(out)!r}: {e.strerror or e}") from None
    bar = tqdm(total=total, unit="img", desc=out.name, disable=not progress, smoothing=0.05)
    t0 = time.perf_counter()
    good = f.tell()

    def write(rows: list[dict]) -> None:
        nonlocal good
        data = memoryview("".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in rows).encode())
        try:
            while data:  # a raw write may take part of the bytes
                data = data[f.write(data) :]
            good = f.tell()
        except OSError as e:
            with contextlib.suppress(OSError):  # leave the file as it was before this batch: whole lines only
                os.truncate(out, good)
            raise ConfigError(
                f"cannot write the results file {str(out)!r}: {e.strerror or e}; it holds "
                f"{summary.lines} complete lines, and the same command continues it"
            ) from None
        summary.lines += len(rows)

    pending: list[tuple[str, str, Any, Any]] = []

    def flush() -> None:
        if not pending:
            return
        found = predictor.results(predictor.run([x for *_, x in pending]), [im for *_, im, _ in pending], **options)
        rows = []
        for (root, rel, im, _), r in zip(pending, found):
            rows.append({"root": root, "path": rel, "width": im.width, "height": im.height,
                         **predictor.inference.to_json(r)})  # fmt: skip
        write(rows)
        summary.done += len(rows)
        bar.update(len(rows))
        pending.clear()

    def todo() -> Iterator[tuple[str, str, Path]]:
        for root, rel, path in walk(inputs):
            if (root, rel) in done:
                summary.skipped += 1
                bar.update()
            else:
                yield root, rel, path

    with ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="mnv2-decode") as pool:
        ahead: deque = deque()
        items = todo()
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
                    write([{"root": root, "path": rel, "error": decoded}])
                    summary.failed += 1
                    bar.update()
                    continue
                im, x = decoded
                if tile is not None:  # one image's tiles are a batch of their own
                    flush()
                    r = predictor.predict_tiled(im, tile, overlap, **options)
                    write([{"root": root, "path": rel, "width": im.width, "height": im.height,
                            **predictor.inference.to_json(r)}])  # fmt: skip
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
            bar.close()
            f.close()
            summary.seconds = time.perf_counter() - t0
            summary.images_per_s = (summary.done + summary.failed) / summary.seconds if summary.seconds else 0.0
            _write_summary(out, summary)
    return summary


def _write_summary(out: Path, summary: JobSummary) -> None:
    side = out.with_name(out.name + SUMMARY_SUFFIX)
    tmp = side.with_name(side.name + ".tmp")
    try:
        tmp.write_text(json.dumps(asdict(summary), indent=1) + "\n")
        os.replace(tmp, side)
    except OSError:  # the results file is what matters; a summary that cannot be written is not fatal
        tmp.unlink(missing_ok=True)
