"""``mnv2 eval --tile SIZE``: a checkpoint evaluated through the inference half on overlapping tiles (issue 27, 2),
the way ``mnv2 predict --tile`` answers, so a tiled prediction's accuracy is measured, not assumed. Each eval image
is decoded at full size, cut into tiles, run by the torch engine (the module every export traces), merged by the
task (boxes without the overlaps' duplicates; segmentation logits blended), and fed to the task's own evaluator."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from mnv2.deploy.runtime.predict import Predictor
from mnv2.errors import ConfigError
from mnv2.tasks import eval_data_options, get_task
from mnv2.weights.checkpoint import read_checkpoint_meta


def evaluate_tiled(
    checkpoint: str | Path, data: str, *, tile: int, overlap: float, split: str | None = None, workers: int = 2,
    strict: bool = False, drop_invalid: bool = False, threads: int | None = None,
) -> tuple[dict, list[str], object]:  # fmt: skip
    """``(metrics, class names, data report)`` of ``checkpoint`` on ``data``'s ``split`` with tiled inference."""
    meta = read_checkpoint_meta(checkpoint)
    task = get_task(meta.task)
    if task.update_with_result is None:
        raise ConfigError(f"--tile is for detection and segmentation checkpoints; {str(checkpoint)!r} is a "
                          f"{task.name} model, which answers for the whole image")  # fmt: skip
    predictor = Predictor.open(checkpoint, "torch", threads=threads)
    predictor.check_tiles(tile, overlap)
    batches, classes, report = task.load_eval_data(
        data, meta.preprocessing, 1, split=split, workers=workers, strict=strict,
        invalid="drop" if drop_invalid else "error", **eval_data_options(meta),
    )  # fmt: skip
    classes = list(classes if classes is not None else meta.class_names)
    if meta.class_names is not None and list(meta.class_names) != classes:
        raise ConfigError(f"the checkpoint's classes {list(meta.class_names)[:5]}... differ from the data's "
                          f"{classes[:5]}...")  # fmt: skip
    evaluator = task.evaluator(classes, meta)
    dataset = batches.dataset
    for i in tqdm(range(len(dataset)), desc=f"eval, tiles of {tile}", leave=False):
        image, target = dataset.raw(i)
        result = predictor.predict_tiled(image, tile, overlap, **task.result_options)
        task.update_with_result(evaluator, result, target)
    evaluator.reduce(lambda t: t)
    return evaluator.compute(), classes, report
