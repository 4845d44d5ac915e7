"""The tasks on the one MobileNetV2 backbone, each a module supplying data, model, loss, evaluator and
post-processing to the shared engine (``mnv2.tasks.base.Task``)."""

from __future__ import annotations

from mnv2.errors import ConfigError
from mnv2.tasks import classification, detection, segmentation
from mnv2.tasks.base import Evaluator, Task

# The one list of tasks: a checkpoint's ``task`` field and ``mnv2 train --task`` name one of these.
TASKS: dict[str, Task] = {
    classification.NAME: classification.TASK,
    detection.NAME: detection.TASK,
    segmentation.NAME: segmentation.TASK,
}
DEFAULT_TASK = classification.NAME


def get_task(name: str) -> Task:
    """The task called ``name``; a ConfigError lists the known ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; mnv2 knows: {', '.join(TASKS)}")
    return TASKS[name]


def predict_info(meta) -> dict:
    """What a task's ``predict`` needs to know of a checkpoint (its ``CheckpointMeta``): preprocessing, class names
    (or their count), output kind (``"logits"``/``"probabilities"``) and head arguments."""
    return {
        "preprocessing": meta.preprocessing,
        "class_names": meta.class_names or meta.model_config.num_classes,
        "output": meta.model_config.output_kind,
        "head": meta.head,
    }


def eval_data_options(meta) -> dict:
    """What a task's ``load_eval_data`` needs from a checkpoint to read labels as its training did: the training
    config's ``ignore_index`` (segmentation data without a ``classes.json``, e.g. CamVid's 11)."""
    ignore = (meta.config or {}).get("ignore_index")
    return {"ignore_index": ignore} if ignore is not None else {}


__all__ = ["DEFAULT_TASK", "TASKS", "Evaluator", "Task", "eval_data_options", "get_task", "predict_info"]
