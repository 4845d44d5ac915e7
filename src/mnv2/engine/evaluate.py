"""``mnv2 eval``: run a checkpoint on a dataset, for any task (the task is read from the checkpoint). Prediction on
image files is ``mnv2.deploy.runtime.predict``."""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

import torch

from mnv2.data.folder import ScanReport
from mnv2.engine.loop import evaluate
from mnv2.errors import ConfigError
from mnv2.tasks import eval_data_options, get_task
from mnv2.weights.checkpoint import load_checkpoint


def evaluate_checkpoint(
    checkpoint: str | Path, data: str, *, split: str | None = None, batch_size: int = 250, workers: int = 2,
    strict: bool = False, confusion_png: str | Path | None = None, tta: str = "none", drop_invalid: bool = False,
) -> dict:  # fmt: skip
    """Evaluate ``checkpoint`` on ``data`` with its task's evaluator (classification: ``fashion-mnist``'s test split,
    an image folder or an ``.npz``).

    ``tta="flip"`` averages each image's class probabilities with its mirror image's; a checkpoint trained without
    horizontal flips gets a warning, since mirrored inputs were never in its training data.

    Invalid ground truth (a detection box with no area or outside its image) is an error naming the file and the
    object, unless ``drop_invalid``: then it is dropped and counted in ``skipped``.

    Returns the task's metrics (classification: ``top1``, ``top5`` (percent), ``n``, ``loss``, ``per_class``), plus
    ``skipped`` (corrupt/non-image files, dropped boxes) and ``confusion_png`` (the report picture written).
    """
    model = load_checkpoint(checkpoint)
    meta = model.meta
    task = get_task(meta.task)
    batches, classes, report = task.load_eval_data(
        data, meta.preprocessing, batch_size, split=split, workers=workers, strict=strict,
        in_chans=meta.model_config.in_chans, invalid="drop" if drop_invalid else "error", **eval_data_options(meta),
    )  # fmt: skip
    if classes is None:  # arrays (.npz) carry labels only
        classes = list(meta.class_names or [str(i) for i in range(meta.model_config.num_classes)])
    if meta.class_names is not None and list(meta.class_names) != list(classes):
        raise ConfigError(
            f"the checkpoint's classes {list(meta.class_names)[:5]}... differ from the data's {classes[:5]}... "
            f"({len(meta.class_names)} vs {len(classes)} classes)"
        )
    if tta == "flip" and not _trained_with_flips(meta):
        warnings.warn(
            f"{str(checkpoint)!r} was not trained with horizontal flips (its config has augment.hflip 0 or none): "
            "flip test-time augmentation shows it images unlike its training data",
            stacklevel=2,
        )
    result = evaluate(model, batches, task, classes, tta=tta)
    return finish_evaluation(checkpoint, data, task, result, classes, report, confusion_png=confusion_png, tta=tta)


def finish_evaluation(
    checkpoint: str | Path, data: str, task, result: dict, classes: list[str], report: ScanReport, *,
    confusion_png: str | Path | None = None, tta: str = "none", **extra,
) -> dict:  # fmt: skip
    """An evaluation's result as ``mnv2 eval`` reports it: the metrics (tensors dropped), the diagnosis of a
    degenerate model, the report picture written (or why not), what the data reader skipped, and ``extra``."""
    diagnosis = task.diagnose(result) if task.diagnose is not None else None
    png = report_path(checkpoint, confusion_png, task.present.report_file)
    title = f"{Path(checkpoint).name} on {data}: {task.present.format_metrics(result)}"
    written: str | None = str(png)
    why = None
    try:  # the metrics come first: a picture that cannot be written is reported, not fatal
        if not png.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(png.parent))
        task.present.plot_report(result, classes, png, title)
    except OSError as e:
        written, why = None, f"{str(png)!r} not written: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
    result = {k: v for k, v in result.items() if not isinstance(v, torch.Tensor)}
    result.update(tta=tta, confusion_png=written, skipped=_skipped(report), checkpoint=str(checkpoint), data=data,
                  diagnosis=diagnosis, **extra)  # fmt: skip
    if why:
        result["confusion_error"] = why
    return result


def report_path(checkpoint: str | Path, given: str | Path | None, report_file: str) -> Path:
    """Where the report picture goes: ``given`` (inside it when it is a directory; ``.png`` added when it has no
    suffix, as matplotlib would); else the checkpoint's run directory (it has the run's ``config.yaml``), else the
    current directory: never a model folder unasked (a shipped example, a read-only model store; issue 28, 12)."""
    default_name = Path(checkpoint).with_suffix("." + report_file).name
    if not given:
        run_dir = Path(checkpoint).parent
        return (run_dir if (run_dir / "config.yaml").is_file() else Path.cwd()) / default_name
    png = Path(given)
    if png.is_dir():
        return png / default_name
    return png if png.suffix else png.with_name(png.name + ".png")


def _trained_with_flips(meta) -> bool:
    """Whether the checkpoint's training config flipped images (imported weights: ImageNet training did)."""
    if meta.config is None:
        return True
    return float((meta.config.get("augment") or {}).get("hflip", 0) or 0) > 0


def _skipped(report: ScanReport) -> dict:
    return report.skipped_counts()
