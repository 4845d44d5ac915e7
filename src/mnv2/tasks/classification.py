"""Classification (§6.1): MobileNetV2 with its classifier, cross-entropy, top-1/top-5 from a confusion matrix.

The first task on the shared engine; behaviour is exactly that of the classification-only engine it replaced
(the default run reproduces the same weights bit for bit at the same thread count).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnv2.data.preprocessing import DEFAULT_INPUT_SIZE
from mnv2.errors import ConfigError
from mnv2.models.mobilenetv2 import MobileNetV2, MobileNetV2Config, check_resolution
from mnv2.models.registry import model_info
from mnv2.models.utils import unwrap
from mnv2.tasks.base import Int8Spec, PaperModel, Presentation, Task, confusion_diagnosis
from mnv2.tasks.infer.classification import INFERENCE, NAME

TTA_MODES = ("none", "flip")  # flip: mean of an image's and its mirror image's class probabilities


# ----------------------------------------------------------------------------------------------- data
def default_preprocessing(config) -> Any:
    from mnv2.data.loaders import fashion_preprocessing, folder_preprocessing

    if config.data == "fashion-mnist":
        return fashion_preprocessing(config.resolution)
    return folder_preprocessing(config.resolution)


def build_data(config, preprocessing, *, rank: int = 0, world: int = 1, pin: bool = False):
    """Fashion-MNIST (val = its official test split) or an image folder, as ``mnv2.data.loaders.build_data``."""
    from mnv2.data.loaders import build_data as load

    return load(
        config.data, preprocessing, config.augment, config.batch_size // world, config.eval_batch_size,
        data_root=config.data_root, val_split=config.val_split, strict=config.strict, workers=config.workers,
        seed=config.seed, rank=rank, world=world, pin=pin, train_limit=config.train_limit, val_limit=config.val_limit,
    )  # fmt: skip


def load_eval_data(data: str, preprocessing, batch_size: int, **kwargs):
    from mnv2.data.loaders import build_eval_data

    return build_eval_data(data, preprocessing, batch_size, **kwargs)


# ----------------------------------------------------------------------------------------------- model
def build_model(config, class_names: list[str], backbone: MobileNetV2Config | None = None) -> MobileNetV2:
    """A fresh classifier from the config's architecture flags, or ``backbone``'s (an ``--init`` checkpoint's)
    architecture with a head for ``class_names``."""
    if backbone is not None:
        mc = dataclasses.replace(backbone, num_classes=len(class_names), dropout=config.dropout, output="logits")
        return MobileNetV2(mc)
    check_resolution(config.resolution)
    width = model_info(config.model).width_mult if config.model else config.width
    mc = MobileNetV2Config(
        width_mult=width, num_classes=len(class_names), dropout=config.dropout, stem_stride=config.stem_stride,
        padding=config.padding,
    )  # fmt: skip
    return MobileNetV2(mc)


def from_meta(meta) -> MobileNetV2:
    n_out = meta.model_config.num_classes
    if meta.class_names is not None and n_out and len(meta.class_names) != n_out:
        raise ConfigError(f"names {len(meta.class_names)} classes but its classifier has {n_out} outputs")
    return MobileNetV2(meta.model_config)


def init_from(model: MobileNetV2, source: nn.Module) -> list[str]:
    """Copy ``source``'s weights; its classifier too when the class counts agree. Returns what was re-initialised."""
    state = unwrap(source).state_dict()
    own = model.state_dict()
    if any(state[k].shape != own[k].shape for k in own if k.startswith("classifier.") and k in state):
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise ConfigError(f"--init weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return list(missing)


# ----------------------------------------------------------------------------------------------- training
def loss(logits: torch.Tensor, y: torch.Tensor, config) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy with label smoothing (TF-slim's 0.1 in the paper recipe); ``top1`` on the augmented batch."""
    value = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
    return value, {"top1": 100.0 * (logits.argmax(1) == y).float().mean()}


def returns_probabilities(model: nn.Module) -> bool:
    config = getattr(unwrap(model), "config", None)
    return config is not None and config.returns_probabilities


def infer(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Log class scores (logits, or log-probabilities of a softmax model) for the evaluator.

    ``tta="flip"``: log of the mean of the image's and its mirror image's probabilities, still a log-distribution,
    so cross-entropy applies. Only meaningful for a model trained with flips.
    """
    probabilities = returns_probabilities(model)

    def log_scores(t: torch.Tensor) -> torch.Tensor:
        out = model(t).float().cpu()
        return out.clamp_min(1e-12).log() if probabilities else out

    scores = log_scores(x)
    if tta == "flip":
        scores = torch.logaddexp(scores.log_softmax(1), log_scores(x.flip(-1)).log_softmax(1)) - math.log(2)
    return scores


class Evaluator:
    """Top-1/top-5/per-class accuracy (percent) and mean cross-entropy from a confusion matrix."""

    columns = ("loss", "top1", "top5")
    best = "top1"

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        k = len(self.class_names)
        self.confusion = torch.zeros(k, k, dtype=torch.int64)
        self.sums = torch.zeros(2, dtype=torch.float64)  # top-5 hits, summed loss

    def update(self, scores: torch.Tensor, y: torch.Tensor) -> None:
        k = len(self.class_names)
        if scores.shape[1] != k:
            raise ConfigError(f"the model has {scores.shape[1]} outputs but the data has {k} classes")
        y = y.cpu()
        self.sums[1] += F.cross_entropy(scores, y, reduction="sum").double()
        self.confusion += confusion_matrix(scores.argmax(1), y, k)
        self.sums[0] += topk_correct(scores, y, (5,))[5]

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        all_reduce_sum(self.confusion)
        all_reduce_sum(self.sums)

    def compute(self) -> dict[str, Any]:
        result = classification_metrics(self.confusion, int(self.sums[0]), self.sums[1].item(), self.class_names)
        result["confusion"] = self.confusion
        return result


def diagnose(metrics: dict) -> str | None:
    """A degenerate classifier (``mnv2.tasks.base.confusion_diagnosis`` over images)."""
    return confusion_diagnosis(
        metrics["confusion"], list(metrics["per_class"]), "image",
        "likely causes: too few optimizer steps (more --epochs), a learning rate too high or too low (--lr), "
        "or classes so unequal that the rare ones are never answered",
    )  # fmt: skip


def evaluator(class_names: list[str]) -> Evaluator:
    return Evaluator(class_names)


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the top-k predictions, for each k (k capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == target[:, None]
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts with rows = true class, columns = predicted."""
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


def classification_metrics(confusion: torch.Tensor, top5_correct: int, loss_sum: float, class_names: list[str]) -> dict:
    """top1/top5 in percent, n, mean loss and per-class accuracy (percent; ``None`` for absent classes)."""
    n = int(confusion.sum())
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = 100.0 * int(confusion[i, i]) / total if total else None
    return {
        "top1": 100.0 * int(confusion.diag().sum()) / max(n, 1),
        "top5": 100.0 * top5_correct / max(n, 1),
        "n": n,
        "loss": loss_sum / max(n, 1),
        "per_class": per_class,
    }


def format_metrics(m: dict) -> str:
    """``loss 0.3512 top-1 91.23% top-5 99.80%`` from whichever of these ``m`` holds (training logs no top-5)."""
    parts = [f"loss {m['loss']:.4f}"] if "loss" in m else []
    parts += [f"{label} {m[k]:.2f}%" for k, label in (("top1", "top-1"), ("top5", "top-5")) if k in m]
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------- report
def plot_report(result: dict, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """The row-normalised confusion matrix (true class per row) with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = result["confusion"].double()
    norm = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------------------------- INT8
def int8_update(evaluator: Evaluator, outputs, targets, meta) -> None:
    """One batch of an exported classifier's outputs and labels into the evaluator; a softmax model's probabilities
    as their log, the scores its cross-entropy takes (as :func:`infer` gives them)."""
    scores = torch.as_tensor(outputs).float()
    if meta.model_config.returns_probabilities:
        scores = scores.clamp_min(1e-12).log()
    evaluator.update(scores, torch.tensor([int(t) for t in targets]))


def int8_agreement(fp32, int8) -> float:
    """% of images whose top class is the same in both outputs."""
    return float((fp32.argmax(1) == int8.argmax(1)).mean() * 100.0)


def int8_calibration_split(data: str) -> str | None:
    """Fashion-MNIST's train split, an image folder's ``train/`` part; else all of ``data`` (an ``.npz``, a folder
    of class folders)."""
    from mnv2.data import fashion_mnist

    return "train" if data == fashion_mnist.NAME or (Path(data) / "train").is_dir() else None


def int8_held_out(data: str) -> bool:
    """Whether ``data`` holds images apart from its calibration part: Fashion-MNIST's test split, a folder's ``val/``
    beside its ``train/``. An ``.npz`` or a folder of class folders is one set."""
    from mnv2.data import fashion_mnist

    root = Path(data)
    return data == fashion_mnist.NAME or ((root / "train").is_dir() and (root / "val").is_dir())


INT8 = Int8Spec(
    update=int8_update,
    metrics=("top1", "top5"),
    points=1.0,  # top-1 is a percentage
    # Top-1 agreement with fp32 ranks the methods before top-1: it is what quantization must preserve, and it tells
    # methods apart on a few images where top-1 ties (BENCHMARKS.md, INT8).
    agreement=int8_agreement,
    calibration_images=512,
    batch=64,
    formats=("onnx", "tflite"),
    calibration_split=int8_calibration_split,
    held_out=int8_held_out,
)


TASK = Task(
    name=NAME,
    int8=INT8,
    build_data=build_data,
    default_preprocessing=default_preprocessing,
    build_model=build_model,
    from_meta=from_meta,
    init_from=init_from,
    loss=loss,
    train_parts=("top1",),
    evaluator=evaluator,
    infer=infer,
    tta_modes=TTA_MODES,
    load_eval_data=load_eval_data,
    inference=INFERENCE,
    diagnose=diagnose,
    paper=PaperModel(1000, ((DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE),)),
    bakes_preprocessing=True,
    present=Presentation(plot_report, "confusion.png", format_metrics, lambda v: f"{v:6.2f}%"),
)
