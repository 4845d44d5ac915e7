"""Segmentation (§6.3): Mobile DeepLabv3, cross-entropy with an ignore label, mIoU from a confusion matrix.

The model (``mnv2.models.deeplab.DeepLabV3``) returns logits at the input size; masks come from
``mnv2.data.segmentation`` with the ignore label mapped to 255 (:data:`IGNORE_INDEX`), whatever the data's own
ignore index. The :class:`Evaluator` sums a class confusion matrix over valid pixels (DDP: summed over ranks) and
reports ``mIoU`` (TF's ``mean_iou``: classes that never occur and are never predicted are left out of the mean),
``per_class_iou``, ``pixel_acc`` and ``mean_class_acc`` as fractions in [0, 1], the mean val cross-entropy per
pixel (``loss``) and the number of images (``n``). ``best`` is ``mIoU``.

A run's segmentation settings are its :class:`SegmentationOptions` (``TrainConfig.options``): ``output_stride`` (16,
the paper's), ``aspp`` (``"off"``: the paper's on-device head; ``"separable"`` or ``"regular"``), ``ignore_index``
(the data's ``classes.json``, else 255), ``class_weights`` (a list, one per class; none by default) and
``class_weighting``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
from mnv2.data.segmentation import IGNORE_INDEX, data_class_colors
from mnv2.errors import ConfigError
from mnv2.models.deeplab import DeepLabConfig, DeepLabV3
from mnv2.models.mobilenetv2 import MIN_INPUT_SIZE, MobileNetV2, MobileNetV2Config, check_resolution
from mnv2.models.registry import model_info
from mnv2.models.utils import unwrap
from mnv2.tasks.base import (
    Int8Spec,
    PaperModel,
    Presentation,
    Task,
    confusion_diagnosis,
    task_options,
    with_bn_momentum,
)
from mnv2.tasks.infer.segmentation import INFERENCE, NAME
from mnv2.typed import option

# "flip": mean of the image's and its mirror image's class probabilities; "ms_flip": the paper's MF setting (Table 7),
# TF DeepLab's eval_scales 0.5 … 1.75 with add_flipped_images, probabilities averaged over all 12 views.
TTA_MODES = ("none", "flip", "ms_flip")
MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
ASPP_MODES = {"off": (False, True), "separable": (True, True), "regular": (True, False)}
EVAL_BATCH_MAX = 8  # full-resolution images (CamVid 480x360): logits of 8 images are already ~60 MB
CLASS_WEIGHTING = ("auto", "none")


@dataclass(frozen=True)
class SegmentationOptions:
    """What only a segmentation run sets (``TrainConfig.options``; each a ``mnv2 train`` flag but
    ``class_weights``)."""

    output_stride: int | None = option(None, "segmentation: backbone output stride, 16 (the paper) or 8",
                                       choices=(8, 16))  # fmt: skip
    aspp: str = option("off", "segmentation head: off (the paper's on-device head), separable or regular ASPP",
                       choices=tuple(ASPP_MODES))  # fmt: skip
    ignore_index: int | None = option(None, "segmentation: the label files' 'not annotated' value (default: the "
                                      "data's classes.json, else 255; CamVid: 11)")  # fmt: skip
    class_weights: list[float] | None = None  # per-class loss weights (the automatic ones, or a recipe's)
    class_weighting: str = option(
        "auto", "segmentation: auto (a class under 5 %% of the train pixels gets loss weights from the data, written "
        "into config.yaml) or none", choices=CLASS_WEIGHTING,
    )  # fmt: skip

    def __post_init__(self) -> None:
        weights_ok = self.class_weights is None or all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
            for w in self.class_weights
        )
        checks = [
            (self.output_stride in (None, 8, 16), "output_stride must be 8 or 16"),
            (self.aspp in ASPP_MODES, f"aspp must be one of {tuple(ASPP_MODES)}"),
            (self.class_weighting in CLASS_WEIGHTING, f"class_weighting must be one of {CLASS_WEIGHTING}"),
            (weights_ok, "class_weights must be finite numbers >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{msg}; got {getattr(self, msg.split()[0])!r}")


def options(config) -> SegmentationOptions:
    return task_options(SegmentationOptions, config)


# ----------------------------------------------------------------------------------------------- data
def default_preprocessing(config) -> Preprocessing:
    """Train crops of ``config.resolution`` (eval runs at full resolution, see ``mnv2.data.segmentation``) and
    [-1, 1] inputs, as TF DeepLab's ``mobilenet_v2`` preprocessing (``2 / 255 * x - 1``). Fine-tuning replaces
    mean/std with the ``--init`` checkpoint's (the engine does)."""
    check_resolution(config.resolution)
    return Preprocessing(input_size=config.resolution, crop_pct=1.0, interpolation="bilinear", mean=TF_MEAN, std=TF_STD)


def build_data(config, preprocessing, *, rank: int = 0, world: int = 1, pin: bool = False):
    """A VOC or SegNet-layout folder (``mnv2.data.segmentation``): augmented train crops, full-resolution val."""
    from mnv2.data.segmentation import SegmentationAugment, build_segmentation_data

    per_process = config.batch_size // world
    if per_process < 2:
        # BatchNorm after the image-pooling branch sees one value per channel and image: it needs two images
        raise ConfigError(f"segmentation trains with at least 2 images per process; batch {config.batch_size} over "
                          f"{world} process(es) gives {per_process}")  # fmt: skip
    return build_segmentation_data(
        config.data, preprocessing, per_process, min(config.eval_batch_size, EVAL_BATCH_MAX),
        val_split=config.val_split, strict=config.strict, workers=config.workers, seed=config.seed, rank=rank,
        world=world, pin=pin, train_limit=config.train_limit, val_limit=config.val_limit,
        aug=SegmentationAugment(hflip=config.augment.hflip), ignore_index=options(config).ignore_index,
    )  # fmt: skip


def load_eval_data(data: str, preprocessing, batch_size: int, **kwargs):
    """``(batches, class_names | None, report)`` of a segmentation dataset's ``split`` (default: its val split)."""
    from mnv2.data.segmentation import build_segmentation_eval_data

    kwargs.pop("in_chans", None)
    return build_segmentation_eval_data(data, preprocessing, min(batch_size, EVAL_BATCH_MAX), **kwargs)


# ----------------------------------------------------------------------------------------------- model
def head_config(config, num_classes: int, class_colors=None) -> DeepLabConfig:
    """The head a run trains: the paper's on-device head at output stride 16 unless the TrainConfig says otherwise
    (``output_stride``, ``aspp``), with the config's dropout (the segmentation recipe: TF's 0.1)."""
    opts = options(config)
    with_aspp, separable = ASPP_MODES[opts.aspp]
    return DeepLabConfig(
        num_classes=num_classes, output_stride=opts.output_stride or 16, aspp=with_aspp,
        separable=separable, dropout=config.dropout, class_colors=class_colors,
    )  # fmt: skip


def backbone_config(config: MobileNetV2Config) -> MobileNetV2Config:
    """The backbone DeepLab runs: no classifier, stem stride 2 (the atrous rates assume it); width, padding and BN
    settings as given. The output stride is the head's (``DeepLabV3`` sets it)."""
    return dataclasses.replace(config, num_classes=0, output="logits", stem_stride=2)


def build_model(config, class_names: list[str], backbone: MobileNetV2Config | None = None) -> DeepLabV3:
    """A fresh DeepLabV3 for ``class_names`` from the config's width (or ``--model``) and padding, or on ``backbone``
    (an ``--init`` checkpoint's architecture). Class colours come from the data's class file (or VOC's map)."""
    if backbone is None:
        width = model_info(config.model).width_mult if config.model else config.width
        backbone = MobileNetV2Config(width_mult=width, num_classes=0, padding=config.padding)
    colors = data_class_colors(config.data, len(class_names))
    return DeepLabV3(backbone_config(with_bn_momentum(backbone, config)), head_config(config, len(class_names), colors))


def from_meta(meta) -> DeepLabV3:
    """The architecture a segmentation checkpoint describes: ``model_config`` (backbone) + ``head``."""
    if not meta.head:
        raise ConfigError("a segmentation checkpoint needs its head arguments (metadata 'head')")
    return DeepLabV3(meta.model_config, DeepLabConfig.from_dict(meta.head, "checkpoint head"))


def init_from(model: DeepLabV3, source: nn.Module) -> list[str]:
    """Copy ``--init`` weights: a classifier's ``stem.*`` and ``blocks.*`` into the backbone (its 1280-channel conv
    and classifier are not part of DeepLab: TF's ``layer_18`` ends before them), another task model's backbone
    (``backbone.stem.*``, ``backbone.blocks.*``: SSDLite, DeepLab), or a segmenter's every tensor whose shape fits
    (the logits too when the classes agree). Returns the state keys left freshly initialised."""
    src = unwrap(source)
    state = src.state_dict()
    own = model.state_dict()
    if isinstance(src, MobileNetV2):
        load = {f"backbone.{k}": v for k, v in state.items() if k.split(".")[0] in ("stem", "blocks")}
    elif isinstance(src, DeepLabV3):
        load = {k: v for k, v in state.items() if not (k in own and own[k].shape != v.shape and "logits" in k)}
    elif hasattr(src, "backbone"):
        load = {k: v for k, v in state.items() if k.split(".")[:2] in (["backbone", "stem"], ["backbone", "blocks"])}
    else:
        raise ConfigError(f"--init must be a MobileNetV2 classifier or a task model on its backbone, got "
                          f"{type(src).__name__}")  # fmt: skip
    unexpected = sorted(k for k in load if k not in own)
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in load.items()
              if k in own and own[k].shape != v.shape]  # fmt: skip
    if unexpected or shapes:
        raise ConfigError(f"--init weights do not fit the segmenter: unexpected {unexpected[:3]}, shapes {shapes[:3]}")
    missing, _ = model.load_state_dict(load, strict=False)
    return list(missing)


# ----------------------------------------------------------------------------------------------- training
def loss(logits: torch.Tensor, masks: torch.Tensor, config) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pixel cross-entropy over the non-ignored pixels (TF DeepLab: softmax cross-entropy with weight 0 on
    ``ignore_label``, averaged over the others), with the config's label smoothing and optional ``class_weights``;
    part ``pixel_acc``: the fraction of valid pixels right on the augmented batch."""
    logits = logits.float()
    weights = options(config).class_weights
    weight = None
    if weights:
        if len(weights) != logits.shape[1]:
            raise ConfigError(f"class_weights has {len(weights)} values for {logits.shape[1]} classes")
        weight = torch.tensor(weights, dtype=logits.dtype, device=logits.device)
    valid = masks != IGNORE_INDEX
    if not bool(valid.any()):  # a crop of padding only: no pixel to learn from, and a mean over none is NaN
        return logits.sum() * 0.0, {"pixel_acc": torch.zeros(())}
    value = F.cross_entropy(logits, masks, weight=weight, ignore_index=IGNORE_INDEX,
                            label_smoothing=config.label_smoothing)  # fmt: skip
    with torch.no_grad():
        acc = (logits.argmax(1)[valid] == masks[valid]).float().mean()
    return value, {"pixel_acc": acc}


def infer(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Per-pixel class scores ``[N, C, H, W]`` (float, CPU) at the batch's size for the evaluator: logits, or with
    test-time augmentation the log of the mean class probabilities over the views (still a log-distribution, so
    the val cross-entropy applies). ``ms_flip``: each scale's probabilities resized back bilinearly (TF
    ``predict_labels_multi_scale``)."""
    if tta == "none":
        return model(x).float().cpu()
    h, w = x.shape[-2:]
    scales = MS_SCALES if tta == "ms_flip" else (1.0,)
    total = None
    for s in scales:
        size = (max(MIN_INPUT_SIZE, round(h * s)), max(MIN_INPUT_SIZE, round(w * s)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for view in (xs, xs.flip(-1)):
            p = model(view).float().softmax(1)
            if view is not xs:
                p = p.flip(-1)
            if p.shape[-2:] != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            total = p if total is None else total.add_(p)
    return (total / (2 * len(scales))).clamp_min_(1e-12).log_().cpu()


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` pixel counts, rows = true class, columns = predicted, over pixels whose target is not ignored."""
    valid = target != IGNORE_INDEX
    t, p = target[valid], pred[valid]
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """mIoU, IoU per class, pixel accuracy and mean class accuracy (fractions) of a confusion matrix.

    IoU of class c = TP / (TP + FP + FN); a class absent from the ground truth and never predicted has no IoU
    (``None``) and is left out of the mean, as TF's ``mean_iou``; one never present but predicted has IoU 0. Mean
    class accuracy averages TP / (TP + FN) over the classes present.
    """
    cm = confusion.double()
    tp = cm.diag()
    gt, pred = cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.nan)
    total = cm.sum()

    def mean(v: torch.Tensor) -> float | None:
        ok = ~torch.isnan(v)
        return float(v[ok].mean()) if ok.any() else None  # undefined (every pixel ignored): null, "n/a"

    per_class = {name: (None if math.isnan(v) else float(v)) for name, v in zip(class_names, iou.tolist())}
    return {
        "mIoU": mean(iou),
        "per_class_iou": per_class,
        "pixel_acc": float(tp.sum() / total) if total > 0 else None,
        "mean_class_acc": mean(acc),
        "per_class_acc": {name: (None if math.isnan(v) else float(v)) for name, v in zip(class_names, acc.tolist())},
    }


class Evaluator:
    """Confusion-matrix metrics and the mean val cross-entropy per valid pixel; DDP-safe (``reduce`` sums the
    confusion matrix and the loss sums over ranks). ``update`` takes ``infer``'s scores ``[N, C, H, W]`` and masks
    ``[N, H, W]`` (255 = ignore)."""

    columns = ("loss", "mIoU", "pixel_acc", "mean_class_acc")
    best = "mIoU"

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)
        k = len(self.class_names)
        self.confusion = torch.zeros(k, k, dtype=torch.int64)
        self.sums = torch.zeros(3, dtype=torch.float64)  # summed loss, valid pixels, images

    def update(self, scores: torch.Tensor, masks: torch.Tensor) -> None:
        k = len(self.class_names)
        scores, masks = scores.float().cpu(), masks.cpu().long()
        if scores.shape[1] != k:
            raise ConfigError(f"the model has {scores.shape[1]} classes but the data has {k}")
        if scores.shape[-2:] != masks.shape[-2:]:
            raise ConfigError(f"scores of size {tuple(scores.shape[-2:])} for masks of {tuple(masks.shape[-2:])}")
        valid = masks != IGNORE_INDEX
        out = masks[valid & (masks >= k)]
        if out.numel():
            raise ConfigError(
                f"the evaluation masks hold label(s) {sorted(set(out.tolist()))[:8]} outside the model's {k} classes "
                "and not the ignore label: give the data's classes.json (with its ignore_index, e.g. CamVid's 11)"
            )
        if valid.any():
            self.sums[0] += F.cross_entropy(scores, masks, ignore_index=IGNORE_INDEX, reduction="sum").double()
        self.sums[1] += int(valid.sum())
        self.sums[2] += len(masks)
        self.confusion += confusion_matrix(scores.argmax(1), masks, k)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        all_reduce_sum(self.confusion)
        all_reduce_sum(self.sums)

    def compute(self) -> dict[str, Any]:
        result = segmentation_metrics(self.confusion, self.class_names)
        pixels = self.sums[1].item()
        result["loss"] = self.sums[0].item() / pixels if pixels else 0.0
        result["n"] = int(self.sums[2].item())
        result["pixels"] = int(pixels)
        result["per_class"] = result["per_class_iou"]  # what `mnv2 eval` prints per class
        result["confusion"] = self.confusion
        return result


RARE_CLASS = 0.05  # a class under this share of the train pixels is one the plain loss can ignore


def data_report(data, model, config) -> str:
    """Images per split and their sizes, each class's share of the labelled pixels in train and val, and the rare
    classes among them, with what to do about them (issue 24, 1)."""

    names = data.class_names
    lines = [f"data report ({config.data}):"]
    shares = {}
    for split, batches in (("train", data.train), (data.val_name, data.val)):
        records = batches.dataset.records
        sizes = sorted({(r.width, r.height) for r in records})
        size_text = f"{sizes[0][0]}x{sizes[0][1]}" if len(sizes) == 1 else f"{len(sizes)} sizes"
        shares[split] = pixel_shares(data, batches)
        per_class = ", ".join(f"{n} {100 * f:.1f} %" for n, f in zip(names, shares[split]))
        lines.append(f"  {split}: {len(records)} images ({size_text}); labelled pixels: {per_class}")
    rare = [(n, f) for n, f in zip(names, shares["train"]) if 0 < f < RARE_CLASS]
    absent = [n for n, f in zip(names, shares["train"]) if f == 0]
    if rare:
        text = ", ".join(f"{n} ({100 * f:.1f} %)" for n, f in rare)
        weights = options(config).class_weights
        doing = (
            f"class weights {weights} are set"
            if weights
            else "no class weights are set (--class-weighting none): a model that never answers them loses little"
        )
        lines.append(f"  rare classes (under {100 * RARE_CLASS:.0f} % of the train pixels): {text}; {doing}")
    if absent:
        lines.append(f"  classes with no train pixel: {', '.join(absent)} (they cannot be learnt)")
    return "\n".join(lines)


MAX_CLASS_WEIGHT = 10.0


def pixel_shares(data, batches) -> np.ndarray:
    """Each class's share of the labelled pixels of ``batches``' images (from the scan's per-file counts)."""
    counts = getattr(data.report, "counts", {})
    k = len(data.class_names)
    pixels = sum((counts[r.label][:k] for r in batches.dataset.records if r.label in counts), np.zeros(k))
    return pixels / pixels.sum() if pixels.sum() else pixels


def auto_class_weights(shares: np.ndarray) -> list[float] | None:
    """Loss weights when a class is rare (under :data:`RARE_CLASS` of the pixels): ``sqrt(largest share / share)``,
    at most :data:`MAX_CLASS_WEIGHT` (absent classes 1). Measured on CrackForest (crack 1.7 % of the pixels, 88 train
    images, AdamW 40 epochs): without weights every pixel is "surface" at every epoch evaluated (1-18, mIoU 0.4925,
    class accuracy 0.5000); with these (crack 7.6) val mIoU 0.62 (BENCHMARKS.md, "New data")."""
    present = shares > 0
    if not present.any() or shares[present].min() >= RARE_CLASS:
        return None
    w = np.ones_like(shares)
    w[present] = np.minimum(np.sqrt(shares.max() / shares[present]), MAX_CLASS_WEIGHT)
    return [round(float(v), 3) for v in w]


def adapt(config, data) -> tuple[Any, list[str]]:
    """The defaults chosen from the data (issue 24, 2), written into the run's config.yaml: class weights for rare
    classes unless ``--class-weighting none`` or the recipe gives ``class_weights``."""
    opts = options(config)
    if opts.class_weighting != "auto" or opts.class_weights is not None:
        return config, []
    weights = auto_class_weights(pixel_shares(data, data.train))
    if weights is None:
        return config, []
    text = ", ".join(f"{n} {w:g}" for n, w in zip(data.class_names, weights))
    return dataclasses.replace(config, options={**config.options, "class_weights": weights}), [
        f"class weights from the data (a class is rare): {text} (--class-weighting none turns this off)"
    ]


def diagnose(metrics: dict) -> str | None:
    """A degenerate segmenter (``mnv2.tasks.base.confusion_diagnosis`` over pixels)."""
    names = list(metrics["per_class_iou"])
    return confusion_diagnosis(
        metrics["confusion"], names, "pixel",
        "likely causes: a rare class the loss can ignore (--class-weighting auto, the default, weights classes under "
        "5 % of the pixels; class_weights in a recipe sets them), too few optimizer steps (a larger --steps or "
        "--epochs, or a smaller --batch-size), or a learning rate too low or too high (--lr)",
    )  # fmt: skip


def evaluator(class_names: list[str], *_: Any) -> Evaluator:
    return Evaluator(class_names)


def format_metrics(m: dict) -> str:
    """``loss 0.4321 mIoU 0.5123 pixel-acc 0.8765 class-acc 0.6012`` from whichever of these ``m`` holds
    (training logs the loss and its batches' ``pixel_acc``)."""
    parts = [f"loss {m['loss']:.4f}"] if m.get("loss") is not None else []
    labels = (("mIoU", "mIoU"), ("pixel_acc", "pixel-acc"), ("mean_class_acc", "class-acc"))
    parts += [f"{label} {'n/a' if m[k] is None else f'{m[k]:.4f}'}" for k, label in labels if k in m]
    return " ".join(parts)


def format_value(v: float) -> str:
    """One per-class IoU as printed by ``mnv2 eval`` (a fraction, as in ``--json``)."""
    return f"{v:.4f}"


# ----------------------------------------------------------------------------------------------- report
def plot_report(result: dict, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """IoU per class as horizontal bars, with the mIoU as a line (classes without IoU shown as n/a)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = result.get("per_class_iou") or {}
    values = [per_class.get(n) for n in class_names]
    fig, ax = plt.subplots(figsize=(6.0, max(2.5, 0.3 * len(class_names) + 1.2)))
    y = np.arange(len(class_names))
    ax.barh(y, [v or 0.0 for v in values], color="tab:blue")
    for i, v in enumerate(values):
        ax.text((v or 0.0) + 0.01, i, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=7)
    miou = result.get("mIoU")
    if miou is not None:
        ax.axvline(miou, color="tab:red", linestyle="--", linewidth=1, label=f"mIoU {miou:.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, class_names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("IoU")
    ax.set_title(title or "IoU per class", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def update_with_result(evaluator: Evaluator, result: dict, target) -> None:
    """One image's blended logits (``Inference.merge_tiles`` with ``scores=True``) and its mask into the
    evaluator."""
    evaluator.update(torch.from_numpy(result["scores"])[None], torch.as_tensor(target)[None])


# ----------------------------------------------------------------------------------------------- INT8
def int8_update(evaluator: Evaluator, outputs, targets, meta) -> None:
    """One batch of an exported segmenter's logits into the evaluator, each resized (bilinear) to its mask's size, as
    the engines run a segmenter exported at one size."""
    for scores, mask in zip(torch.as_tensor(outputs), targets):
        mask = torch.as_tensor(mask)
        scores = F.interpolate(scores[None], size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
        evaluator.update(scores, mask[None])


INT8 = Int8Spec(
    update=int8_update,
    metrics=("mIoU", "pixel_acc"),
    points=100.0,  # IoU is a fraction
    # ORT's calibrators keep every batch's activations until they reduce them: a full-resolution image (CamVid
    # 480x360) holds ~4x a 320 px detector image's, so it gets half a detector's images.
    calibration_images=32,
    batch=4,
    # The stem and block 0 stay fp32 (BENCHMARKS.md: CamVid mIoU 0.611 -> 0.633 INT8, fp32 0.628; any later block
    # left it at 0.603-0.613). ONNX only, as for detection: the TFLite INT8 path cannot keep them fp32.
    float_stem_convs=3,
    resizable=True,
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
    train_parts=("pixel_acc",),
    evaluator=evaluator,
    infer=infer,
    tta_modes=TTA_MODES,
    load_eval_data=load_eval_data,
    inference=INFERENCE,
    diagnose=diagnose,
    adapt=adapt,
    min_batch=2,
    data_report=data_report,
    update_with_result=update_with_result,
    result_options={"scores": True},
    paper=PaperModel(21, ((512, 512), (360, 480)), recipe="segmentation", flags={"padding": "tf"}),
    options=SegmentationOptions,
    present=Presentation(plot_report, "iou.png", format_metrics, format_value),
)
