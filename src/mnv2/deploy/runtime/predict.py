"""The one predict driver (issue 25): image files → the task's inference half (``mnv2.tasks.infer``) → an engine →
results and pictures. ``mnv2 predict``, the Python API and the coming video and batch-job sources call it; the
server uses the same :class:`Predictor` pieces (prepare, run, results) around its micro-batcher. No torch for
exported files: the ``runtime`` install runs it as it is.

>>> p = Predictor.open("raccoon.tflite")
>>> for r in p.predict_files(["photos/"], output_dir="out"):
...     print(p.inference.format_line(r))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnv2.data.images import ImageError, image_paths, load_image
from mnv2.errors import ConfigError
from mnv2.ops import DEFAULT_OVERLAP


@dataclass
class Predictor:
    """A model file opened for inference: its task's inference half, its card (``info``, as the engine answers) and
    a warm engine."""

    inference: Any
    info: dict
    engine: Any
    source: str = ""  # the model file it was opened from
    used_stems: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, source: str | Path, engine: str | None = None, precision: str | None = None,
             threads: int | None = None) -> Predictor:  # fmt: skip
        """Open a checkpoint or an exported ``.onnx``/``.tflite`` file (torch-free). ``engine`` ``None``: torch for a
        checkpoint, the fastest installed engine for an exported file (``auto``, as ``load_engine`` picks)."""
        from mnv2.deploy.runtime.card import EXPORTED_SUFFIXES
        from mnv2.deploy.runtime.engines import card_inference, load_engine

        if engine is None:
            engine = "auto" if str(source).endswith(EXPORTED_SUFFIXES) else "torch"
        inference, info = card_inference(source)
        run = load_engine(source, engine, precision, threads)
        info = run.answers(info)
        shapes = run.io_shapes()
        if shapes is not None:
            info = check_graph(inference, info, *shapes, str(source))
        return cls(inference, info, run, str(source))

    def check_options(self, options: dict) -> dict:
        """The task's options from ``options`` (the others dropped), defaults filled in; every given value is checked,
        whether this task uses it or not (``--min-score 2`` is an error for any model)."""
        given = {k: v for k, v in options.items() if v is not None}
        if "topk" in given and (not isinstance(given["topk"], int) or given["topk"] < 1):
            raise ConfigError(f"--topk must be an integer >= 1, got {given['topk']!r}")
        if "min_score" in given and not 0 <= given["min_score"] <= 1:  # also refuses nan
            raise ConfigError(f"--min-score must be in [0, 1]; got {given['min_score']}")
        return {k: given.get(k, v) for k, v in self.inference.options.items()}

    def prepare(self, image) -> np.ndarray:
        return self.inference.prepare(image, self.info)

    def run(self, inputs: list[np.ndarray]):
        """The engine's outputs for prepared inputs of one shape."""
        return self.engine(np.stack(inputs))

    def results(self, outputs, images: list, **options) -> list[dict]:
        return self.inference.results(outputs, images, self.info, **options)

    def check_tiles(self, tile: int | None, overlap: float) -> None:
        """Refuse bad ``--tile``/``--overlap`` values, and tiles for a task that answers for the whole image."""
        from mnv2.tasks.infer import tiles

        tiles.check(tile, overlap)
        if tile is not None and self.inference.merge_tiles is None:
            raise ConfigError(f"--tile is for detection and segmentation models; this {self.inference.name} model "
                              "answers for the whole image")  # fmt: skip

    def predict_tiled(self, image, tile: int, overlap: float, **options) -> dict:
        """One result for a decoded image cut into ``tile`` x ``tile`` tiles overlapping by ``overlap`` (a fraction of
        a tile), run in batches and merged by the task (``Inference.merge_tiles``: boxes in image pixels without the
        duplicates of the overlaps; segmentation logits blended)."""
        from mnv2.tasks.infer.tiles import run_tiled

        return run_tiled(self.inference, self.info, self.run, image, tile, overlap, **options)

    def predict_images(self, images: list, **options) -> list[dict]:
        """Results of decoded RGB PIL images (batched by shape, in order)."""
        options = self.check_options(options)
        out: list[dict] = []
        pending: list[tuple[Any, np.ndarray]] = []
        for im in images:
            x = self.prepare(im)
            if pending and pending[0][1].shape != x.shape:
                out += self.results(self.run([p for _, p in pending]), [i for i, _ in pending], **options)
                pending = []
            pending.append((im, x))
        if pending:
            out += self.results(self.run([p for _, p in pending]), [i for i, _ in pending], **options)
        return out

    def predict_files(
        self, inputs: Iterable[str | Path], *, batch_size: int | None = None, strict: bool = False,
        output_dir: str | Path | None = None, tile: int | None = None, overlap: float = DEFAULT_OVERLAP, **options: Any,
    ) -> Iterator[dict]:  # fmt: skip
        """Results of every image in ``inputs`` (files and directories, searched recursively), in input order, as
        they are done: ``path`` plus the task's fields. Undecodable files get an ``error`` entry (or raise with
        ``strict``). With ``output_dir``, the task's pictures are written there (their paths in the result). With
        ``tile``, each image is cut into tiles (:meth:`predict_tiled`)."""
        options = self.check_options(options)
        self.check_tiles(tile, overlap)
        batch_size = batch_size or self.inference.batch_size
        out_dir = Path(output_dir) if output_dir is not None else None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        pending: list[tuple[Path, Any, np.ndarray]] = []

        def flush() -> Iterator[dict]:
            if not pending:
                return
            found = self.results(self.run([x for *_, x in pending]), [im for _, im, _ in pending], **options)
            for (p, im, _), r in zip(pending, found):
                yield answer(p, im, r)
            pending.clear()

        def answer(p: Path, im, r: dict) -> dict:  # the result of one image, its pictures written
            result = {"path": str(p), **r}
            if out_dir is not None:
                result.update(self.inference.write(im, r, self.info, out_dir, self._stem(Path(p).stem)))
            return result

        for p in image_paths([str(i) for i in inputs]):
            try:
                im = load_image(p)
            except ImageError as e:
                if strict:
                    raise
                yield from flush()
                yield {"path": str(p), "error": str(e)}
                continue
            if tile is not None:
                yield answer(p, im, self.predict_tiled(im, tile, overlap, **options))
                continue
            x = self.prepare(im)
            if pending and (pending[0][2].shape != x.shape or len(pending) >= batch_size):
                yield from flush()
            pending.append((p, im, x))
        yield from flush()

    def _stem(self, stem: str) -> str:
        name, n = stem, 1
        while name in self.used_stems:
            n += 1
            name = f"{stem}_{n}"
        self.used_stems.add(name)
        return name


def check_graph(inference, info: dict, in_shape: list, out_shape: list, where: str) -> dict:
    """The card against the graph it describes (issue 28, 5): a fixed-size task's input size is the graph's, the
    class count is the output's; a segmenter's fixed graph size is taken from the graph. ``ConfigError`` otherwise."""
    info = dict(info)
    names = info["class_names"]
    n = names if isinstance(names, int) else len(names)
    if len(in_shape) == 4 and all(isinstance(d, int) for d in in_shape[2:]):
        h, w = in_shape[2:]
        side = info["preprocessing"].input_size
        if inference.fixed_size and (h, w) != (side, side):
            raise ConfigError(f"{where!r}: its card says {side} px inputs but the graph takes {w}x{h}")
        if not inference.fixed_size:
            info["input_hw"] = (h, w)
    axis, extra = inference.class_axis
    if len(out_shape) > abs(axis) and isinstance(out_shape[axis], int) and out_shape[axis] != n + extra:
        raise ConfigError(f"{where!r}: its card names {n} classes but the graph's output has {out_shape[axis]} "
                          f"values per {'pixel' if axis == 1 else 'row'} (expected {n + extra})")  # fmt: skip
    return info


class Result(dict):
    """One image's or video frame's answer: the task's fields as a dict (``path`` or ``source``/``frame``/``time_s``,
    then ``top``, ``detections`` or ``fractions`` and ``mask``), plus the picture of it."""

    def __init__(self, fields: dict, predictor: Predictor, image=None) -> None:
        super().__init__(fields)
        self._predictor, self._image = predictor, image

    def plot(self) -> np.ndarray:
        """The results drawn over the image (uint8 RGB ``[H, W, 3]``): boxes and labels, the mask overlay, or the
        top classes."""
        image = self._image if self._image is not None else load_image(self["path"])
        return np.asarray(self._predictor.inference.draw(image, self, self._predictor.info))

    def to_json(self) -> dict:
        """The fields as ``--json`` prints them (a segmentation mask dropped)."""
        return self._predictor.inference.to_json(dict(self))

    def save(self, path: str | Path) -> Path:
        """:meth:`plot` written as a PNG."""
        from mnv2.tasks.infer import save_png

        return Path(save_png(self.plot(), Path(path)))


def predict(
    model: str | Path, source: str | Path | Iterable[str | Path], engine: str | None = None,
    precision: str | None = None, *, stream: bool = False, threads: int | None = None, batch_size: int | None = None,
    strict: bool = False, output_dir: str | Path | None = None, tile: int | None = None,
    overlap: float = DEFAULT_OVERLAP, vid_stride: int = 1, track: bool = False, **options: Any,
) -> list[Result] | Iterator[Result]:  # fmt: skip
    """The task's answers for ``source`` with ``model`` (a checkpoint, or an ONNX or TFLite file from ``mnv2 export``
    or ``mnv2 quantize``) run by ``engine``; preprocessing, class names and task come from the file's own card
    (``engine`` ``None``: torch for a checkpoint, ``auto`` for an exported file, as ``mnv2 predict``).

    ``source``: image files and folders, video files, a camera (``/dev/videoN``) or a stream URL, or a list of them.
    ``stream=True`` yields one :class:`Result` per image or frame as it is done (a camera never ends);
    ``stream=False`` returns the list, and refuses a live source. Results are dicts (JSON-ready but for a
    segmentation ``mask``) with ``.plot()``, ``.to_json()`` and ``.save(path)``. ``track``: a detector's boxes in
    a video get a ``track_id`` stable across frames (ByteTrack, ``mnv2[track]``)."""
    from mnv2.deploy.runtime.video import is_live, is_video_source, iter_frames

    sources = [str(source)] if isinstance(source, (str, Path)) else [str(s) for s in source]
    if not stream and any(is_live(s) for s in sources):
        raise ConfigError("a camera or a stream never ends: call predict(..., stream=True) and iterate")
    p = Predictor.open(model, engine, precision, threads)

    def results() -> Iterator[Result]:  # in the sources' order; image files and folders batched together
        images: list[str] = []
        for s in [*sources, None]:
            if (s is None or is_video_source(s)) and images:
                found = p.predict_files(images, batch_size=batch_size, strict=strict, output_dir=output_dir,
                                        tile=tile, overlap=overlap, **options)  # fmt: skip
                yield from (Result(r, p) for r in found)
                images = []
            if s is not None and is_video_source(s):
                for frame, r in iter_frames(p, s, vid_stride=vid_stride, track=track, **options):
                    yield Result({"source": s, "frame": frame.index, "time_s": frame.time_s, **r}, p, frame.image)
            elif s is not None:
                images.append(s)

    return results() if stream else list(results())
