"""What a task supplies to the shared engine: data, model, loss, evaluator, post-processing and report plots.

The paper runs three tasks on one backbone: classification (§6.1), SSDLite detection (§6.2) and Mobile DeepLabv3
segmentation (§6.3). The engine (``mnv2.engine``) knows none of them: it asks a :class:`Task` for each part, so a
new task is one new module in ``mnv2/tasks/`` plus one line in ``mnv2.tasks.TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


class Batches(Protocol):
    """An epoch-seeded iterable of ``(images, targets)`` (``mnv2.data.loaders``)."""

    num_samples: int

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Any: ...


class Evaluator(Protocol):
    """Accumulates one pass over a dataset; DDP-safe: every rank updates, ``reduce`` sums the ranks' state.

    ``columns`` are the scalar metrics logged each epoch (metrics CSV, curves, checkpoint metadata) in order;
    ``best`` names the one that selects ``best.safetensors`` (higher is better).
    """

    columns: tuple[str, ...]
    best: str

    def update(self, outputs: Any, targets: Any) -> None: ...

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None: ...

    def compute(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Task:
    """One task as plain functions. ``config`` arguments are the engine's ``TrainConfig``; ``meta`` arguments a
    checkpoint's ``CheckpointMeta`` (the task reads them, it never imports the layers that define them).

    Attributes:
        name: the checkpoint's ``task`` field and ``mnv2 train --task``.
        build_data: ``(config, preprocessing, *, rank, world, pin) -> DataBundle``: train and val batches, class
            names, preprocessing, the read report and the val split's name (``mnv2.data.loaders.DataBundle``).
        default_preprocessing: ``(config) -> Preprocessing`` for a fresh run on ``config.data``.
        build_model: ``(config, class_names, backbone_config | None) -> nn.Module``; ``backbone_config`` is the
            ``--init`` checkpoint's architecture when fine-tuning.
        from_meta: ``(meta) -> nn.Module``: the architecture a checkpoint describes (weights not loaded).
        init_from: ``(model, source_model) -> list[str]``: copy ``--init`` weights into ``model``; returns the names of
            the parameters left freshly initialised (e.g. a replaced classifier).
        loss: ``(outputs, targets, config) -> (loss, parts)``; ``parts`` are per-batch scalars logged as ``train_*``.
        train_parts: the names of ``parts``, in log order.
        evaluator: ``(class_names, meta_or_model) -> Evaluator``.
        infer: ``(model, images, tta) -> outputs`` as the evaluator takes them (``tta`` from :attr:`tta_modes`).
        tta_modes: the test-time augmentations ``infer`` knows; ``"none"`` first.
        load_eval_data: ``(data, preprocessing, batch_size, *, split, workers, strict, limit, in_chans)
            -> (batches, class_names | None, report)``.
        inference: the task's numpy inference half (``mnv2.tasks.infer.Inference``: preprocessing, results from
            outputs, drawing, files, text line), shared by the torch path and every engine.
        plot_report: ``(result, class_names, path, title) -> Path``: the evaluation's picture.
        report_file: that picture's file name in a run directory (``eval`` writes ``<checkpoint>.<report_file>``).
        format_metrics: ``(metrics) -> str``: a short human summary (``top-1 91.23% top-5 99.80%``).
        format_value: ``(value) -> str``: one metric value as printed (classification: percent; detection: AP).
        diagnose: ``(metrics) -> str | None``: why the evaluated model is useless (one class for everything, a metric at
            the trivial baseline), with its likely causes and what to try; ``None`` when it is not (issue 24, 3).
        adapt: ``(config, data_bundle) -> (config, notes)``: the defaults chosen from the data (segmentation: class
            weights for rare classes), applied before training and so written into ``config.yaml``; ``notes`` say
            what was chosen and the flag that turns it off.
        min_batch: the fewest images per process a training batch may have (detection and segmentation: 2, since
            SSDLite's last extra layers and DeepLab's image pooling are 1x1 maps, where BatchNorm in train mode needs
            more than one value per channel).
        data_report: ``(data_bundle, model, config) -> str``: what the data holds against what the model can learn of
            it (objects per class and their sizes against the anchors; class pixel shares), printed before training
            and saved as ``data_report.txt`` in the run directory; ``None``: no report.
        export_module: ``(model, (height, width)) -> (module, output)`` or ``None``: what an export traces instead of
            the model (detection: boxes decoded in the graph), and the output kind the file's metadata records
            (the inference half reads it back from ``info["output"]``; the torch engine runs the same module);
            ``None``: the model as it is.
        update_with_result: ``(evaluator, result, target) -> None``: feed one image's inference-half result (a
            tiled prediction, ``mnv2 eval --tile``) and its eval target to the evaluator; ``None``: the task has no
            tiled evaluation.
        result_options: the inference options an evaluation asks of ``Inference.merge_tiles`` (every detection,
            segmentation's blended logits).
    """

    name: str
    build_data: Callable[..., Any]
    default_preprocessing: Callable[[Any], Any]
    build_model: Callable[..., nn.Module]
    from_meta: Callable[[Any], nn.Module]
    init_from: Callable[[nn.Module, nn.Module], list[str]]
    loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    train_parts: tuple[str, ...]
    evaluator: Callable[..., Evaluator]
    infer: Callable[[nn.Module, torch.Tensor, str], Any]
    tta_modes: Sequence[str]
    load_eval_data: Callable[..., tuple]
    inference: Any
    plot_report: Callable[..., Any]
    report_file: str
    format_metrics: Callable[[dict], str]
    format_value: Callable[[float], str]
    export_module: Callable[[nn.Module, tuple[int, int]], tuple[nn.Module, str]] | None = None
    diagnose: Callable[[dict], str | None] | None = None
    min_batch: int = 1
    adapt: Callable[..., tuple[Any, list[str]]] | None = None
    data_report: Callable[..., str] | None = None
    update_with_result: Callable[[Any, dict, Any], None] | None = None
    result_options: dict = field(default_factory=dict)


def with_bn_momentum(backbone, config):
    """``backbone`` (a ``MobileNetV2Config``) with the run's BN momentum (``--bn-momentum``, set by the detection and
    segmentation recipes) for every layer, backbone and head. An ``--init`` checkpoint's own (Keras: 0.001) would
    leave the new layers' running statistics near their initial 0/1 after a short run, and the eval-mode model
    would answer the same for every image (measured: a raccoon detector's val mAP50 stuck at 0.48 with one box)."""
    import dataclasses

    momentum = getattr(config, "bn_momentum", None)
    return backbone if momentum is None else dataclasses.replace(backbone, bn_momentum=momentum)


# One predicted class for at least this share of what was evaluated, while the truth holds several, is a degenerate
# model (CrackForest at the segmentation recipe's defaults: every pixel "surface", mean class accuracy 0.5000).
ONE_CLASS_SHARE = 0.995
CHANCE_MARGIN = 0.02  # a mean per-class accuracy within 2 points of chance tells the classes apart no better


def confusion_diagnosis(confusion, class_names: list[str], unit: str, advice: str) -> str | None:
    """The degenerate cases a confusion matrix (rows: true class, columns: predicted) shows: one class predicted for
    (nearly) every ``unit`` while the truth has two or more classes, or a mean accuracy per class at chance (1 / the
    classes present). Plain accuracy is no test: on CrackForest a useful model (crack recall 0.76, mIoU 0.627) is
    below the 98.5 % of always answering "surface". ``advice`` is what to try, appended to the message."""
    cm = confusion.double()
    total = float(cm.sum())
    true, pred = cm.sum(1), cm.sum(0)
    present = int((true > 0).sum())
    if total == 0 or present < 2:
        return None
    top = int(pred.argmax())
    share = float(pred[top]) / total
    if share >= ONE_CLASS_SHARE:
        return (f"the evaluated model answers {class_names[top]!r} for {100 * share:.1f} % of the {unit}s while "
                f"{present} classes are present: it has learnt nothing useful; {advice}")  # fmt: skip
    recall = cm.diag()[true > 0] / true[true > 0]
    balanced, chance = float(recall.mean()), 1.0 / present
    if balanced <= chance + CHANCE_MARGIN:
        return (f"the mean accuracy per class, {100 * balanced:.1f} %, is at chance ({100 * chance:.1f} % for "
                f"{present} classes): the model tells the classes apart no better than a guess; {advice}")  # fmt: skip
    return None
