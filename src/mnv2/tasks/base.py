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
class Presentation:
    """How a task's results are shown to a person.

    Attributes:
        plot_report: ``(result, class_names, path, title) -> Path``: the evaluation's picture.
        report_file: that picture's file name in a run directory (``eval`` writes ``<checkpoint>.<report_file>``).
        format_metrics: ``(metrics) -> str``: a short human summary (``top-1 91.23% top-5 99.80%``).
        format_value: ``(value) -> str``: one metric value as printed (classification: percent; detection: AP).
    """

    plot_report: Callable[..., Any]
    report_file: str
    format_metrics: Callable[[dict], str]
    format_value: Callable[[float], str]


@dataclass(frozen=True)
class PaperModel:
    """A task's published model, as ``mnv2 summary --task`` and ``mnv2 bench speed --task`` build it (random weights).

    Attributes:
        num_classes: its class count: ImageNet's 1000 (§6.1), COCO's 90 as the TF Object Detection API numbers them
            (label-map ids 1..90, 80 in use: ``num_classes: 90`` in its configs; §6.2), PASCAL VOC's 21 (§6.3).
        sizes: its input sizes ``(height, width)`` in the paper (Table 6: 320; Table 7: 512), then the benchmark's
            others (CamVid's 360x480).
        recipe: the shipped recipe whose architecture flags build it through ``Task.build_model``; ``None``: a
            model of the registry (``mnv2 models``), the classifier's published family.
        flags: architecture flags on top of the recipe's (the TF models' "SAME" padding).
    """

    num_classes: int
    sizes: tuple[tuple[int, int], ...]
    recipe: str | None = None
    flags: dict = field(default_factory=dict)


def calibrate_on_train(data: str) -> str:
    """The split INT8 calibration reads by default: the data's ``train`` part."""
    return "train"


def has_held_out(data: str) -> bool:
    """By default every dataset has a held-out part apart from its train part (its reader's default eval split)."""
    return True


@dataclass(frozen=True)
class Int8Spec:
    """What INT8 post-training quantization (``mnv2 quantize``, ``mnv2.deploy.quantize``) asks of a task. The deploy
    layer builds, calibrates and runs the graphs; the task says how their outputs are scored, which ends stay fp32
    and which data calibrates. The range method is chosen by, and the report's ``drop`` is of, the evaluator's
    ``best`` (the metric that selects ``best.safetensors``).

    Attributes:
        update: ``(evaluator, outputs, targets, meta) -> None``: one batch of an exported graph's outputs (a numpy
            array: a classifier's scores, a detector's decoded boxes, a segmenter's logits) and its eval targets into
            the task's evaluator.
        metrics: the evaluator's results the report shows.
        points: one unit of those metrics in points: 1 for percentages (top-1), 100 for fractions (mAP, mIoU).
        agreement: ``(fp32_outputs, int8_outputs) -> percent`` of samples with the same answer in both, which
            ranks the methods before the metric does; ``None`` where a sample has no single answer (a detector's
            box lists).
        float_stem_convs: how many of the graph's first convolutions stay fp32, together with every node after its
            last convolutions (box decoding, logits upsampling); ``None``: the whole graph is quantized.
        calibration_images: calibration images by default.
        batch: images per run of a graph while scoring (a segmenter's full-resolution logits are large).
        formats: the INT8 file formats the task can be written to.
        resizable: whether the graph may be quantized at another size than the checkpoint's (``input_size``).
        calibration_split: ``(data) -> split | None``: the part of ``data`` calibration reads; ``None``: all of it.
        held_out: ``(data) -> bool``: whether ``data`` has a held-out part apart from the calibration part, which
            the report reads when no eval data is named (else it reads the selection images).
    """

    update: Callable[[Any, Any, Sequence, Any], None]
    metrics: tuple[str, ...]
    points: float
    calibration_images: int
    batch: int
    agreement: Callable[[Any, Any], float] | None = None
    float_stem_convs: int | None = None
    formats: tuple[str, ...] = ("onnx",)
    resizable: bool = False
    calibration_split: Callable[[str], str | None] = calibrate_on_train
    held_out: Callable[[str], bool] = has_held_out


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
        present: how its results are shown to a person (:class:`Presentation`: the report picture, the summary line).
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
        paper: the task's published model (:class:`PaperModel`) for ``summary`` and ``bench``.
        options: the task's own typed options (a frozen dataclass whose fields, made with ``mnv2.typed.option``, are
            ``mnv2 train`` flags too), held in a run's config as ``options`` and read with :func:`task_options`;
            ``None``: none.
        bakes_preprocessing: whether an export may take uint8 pixels and give probabilities
            (``--bake-preprocessing``: a classifier's softmax; a detector's or segmenter's outputs are not one).
        int8: what INT8 post-training quantization needs (:class:`Int8Spec`); ``None``: the task has none.
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
    present: Presentation
    export_module: Callable[[nn.Module, tuple[int, int]], tuple[nn.Module, str]] | None = None
    diagnose: Callable[[dict], str | None] | None = None
    min_batch: int = 1
    adapt: Callable[..., tuple[Any, list[str]]] | None = None
    data_report: Callable[..., str] | None = None
    update_with_result: Callable[[Any, dict, Any], None] | None = None
    result_options: dict = field(default_factory=dict)
    paper: PaperModel | None = None
    options: type | None = None
    bakes_preprocessing: bool = False
    int8: Int8Spec | None = None


def task_options(cls: type, config) -> Any:
    """The options ``cls`` of a run's ``config``: its ``options`` mapping (a ``TrainConfig``), or the same names as
    attributes of a plain namespace (a library caller's or a test's); missing ones take their defaults."""
    import dataclasses

    given = getattr(config, "options", None)
    if isinstance(given, dict):
        return cls(**given)
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)})


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
