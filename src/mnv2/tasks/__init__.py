"""The tasks on the one MobileNetV2 backbone, each a module supplying data, model, loss, evaluator and
post-processing to the shared engine (``mnv2.tasks.base.Task``), and its numpy inference half
(``mnv2.tasks.infer.<name>``).

Nothing here imports torch until a task's training half is asked for (:func:`get_task`, ``TASKS``):
:func:`get_inference` is what the torch-free ``runtime`` install uses.
"""

from __future__ import annotations

import importlib
from typing import Any

from mnv2.errors import ConfigError

# The one list of tasks: a checkpoint's ``task`` field and ``mnv2 train --task`` name one of these; each is the module
# ``mnv2.tasks.<name>`` (training half, ``TASK``) and ``mnv2.tasks.infer.<name>`` (inference half, ``INFERENCE``).
TASK_NAMES = ("classification", "detection", "segmentation")
DEFAULT_TASK = TASK_NAMES[0]


def _check(name: str) -> None:
    if name not in TASK_NAMES:
        raise ConfigError(f"unknown task {name!r}; mnv2 knows: {', '.join(TASK_NAMES)}")


def get_task(name: str):
    """The task called ``name`` (its training half imports torch); a ConfigError lists the known ones."""
    _check(name)
    return importlib.import_module(f"mnv2.tasks.{name}").TASK


def get_inference(name: str):
    """The inference half (``mnv2.tasks.infer.Inference``, numpy only) of the task called ``name``."""
    _check(name)
    return importlib.import_module(f"mnv2.tasks.infer.{name}").INFERENCE


def eval_data_options(meta) -> dict:
    """What a task's ``load_eval_data`` needs from a checkpoint to read labels as its training did: the training
    config's ``ignore_index`` (segmentation data without a ``classes.json``, e.g. CamVid's 11) and the model's class
    count (labels are checked against it as training checks them)."""
    config = meta.config or {}
    ignore = (config.get("options") or {}).get("ignore_index", config.get("ignore_index"))  # or a run before options
    options = {"ignore_index": ignore} if ignore is not None else {}
    if meta.class_names:
        options["num_classes"] = len(meta.class_names)
    return options


def __getattr__(name: str) -> Any:
    if name == "TASKS":  # name -> Task, loaded on first use (imports torch)
        return {n: get_task(n) for n in TASK_NAMES}
    if name in ("Task", "Evaluator"):
        return getattr(importlib.import_module("mnv2.tasks.base"), name)
    raise AttributeError(f"module 'mnv2.tasks' has no attribute {name!r}")


__all__ = ["DEFAULT_TASK", "TASKS", "TASK_NAMES", "Evaluator", "Task", "eval_data_options", "get_inference", "get_task"]
