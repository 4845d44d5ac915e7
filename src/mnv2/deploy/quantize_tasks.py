"""INT8 for the paper's other two models (§6.2 SSDLite, §6.3 Mobile DeepLabv3; issues 15 and 16): ONNX Runtime
static QDQ on the exported graph, calibrated on training images, the range method chosen by the task's metric on a
held-back part of them, and the fp32-vs-INT8 metrics on the eval split in the report.

The classifier's recipe (``mnv2.deploy.quantize``: BN folded, per-channel int8 weights, asymmetric uint8
activations), measured with each task's own evaluator instead of top-1:

- detection: COCO mAP, mAP@0.5, mAP@0.75, NMS on the host on both files' decoded outputs, as ``mnv2 predict`` runs
  them. Methods are chosen by COCO mAP.
- segmentation: mIoU and pixel accuracy, on the graph of one fixed size (TF padding): the eval images' own
  (CamVid 480x360) unless ``input_size`` says otherwise; images of another size are resized to it and the logits
  back, as the engines run an exported segmenter.
- both keep two small ends in fp32 (:func:`mnv2.deploy.quantize.float_ends`): the start of the network, so the
  image is never quantized (the detector's stem conv; the segmenter's stem and first inverted residual block:
  measured, most of each model's INT8 loss), and what follows the last convolutions (box decoding; the logits'
  upsampling).
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mnv2.deploy.onnx_export import ExportOptions, export_onnx, ort_session, size_hw
from mnv2.deploy.quantize import (
    AUTO_ORDER,
    METHODS,
    QuantizationError,
    _copy_metadata,
    float_ends,
    quantize_onnx_static,
)
from mnv2.errors import ConfigError
from mnv2.weights.checkpoint import atomic_write

CALIB_BATCH = 8
# Calibration images by default. ORT's calibrators keep every batch's activations until they reduce them: a
# full-resolution segmentation image (480x360) holds ~4x a 320 px detector image's, so it gets fewer.
DEFAULT_CALIBRATION = {"detection": 64, "segmentation": 32}


@dataclass
class TaskQuantizeReport:
    """What ``mnv2 quantize`` did to a detector or segmenter and what it cost, in the task's metrics."""

    path: str
    task: str
    method: str
    metric: str  # the one methods are chosen by (detection mAP, segmentation mIoU)
    fp32: dict  # the task's metrics of the fp32 export on the eval split
    int8: dict
    drop: dict  # metric -> fp32 - INT8, in points (x 100)
    n_calibration: int
    n_selection: int
    n_eval: int
    input_hw: list[int]
    candidates: dict[str, float] = field(default_factory=dict)  # method -> metric on the selection images
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        m = self.metric
        lines = [f"{'method':<14}{m:>8}   (selection: {self.n_selection} held-back calibration images)"]
        for k, v in self.candidates.items():
            lines.append(f"{k:<14}{v:>8.3f}{'  <- chosen' if k == self.method else ''}")
        names = list(self.drop)
        fp32 = " ".join(f"{k} {self.fp32[k]:.3f}" for k in names)
        int8 = " ".join(f"{k} {self.int8[k]:.3f}" for k in names)
        lines.append(f"eval split (n={self.n_eval}, {self.input_hw[1]}x{self.input_hw[0]}): fp32 {fp32}; INT8 {int8}")
        lines.append("drop: " + ", ".join(f"{k} {v:+.2f} points" for k, v in self.drop.items()))
        lines.append(f"wrote {self.path}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- data
def _batches(
    batches, size: tuple[int, int] | None, limit: int | None = None
) -> tuple[np.ndarray, list, tuple[int, int]]:
    """Images resized to ``size`` (default: the first image's) where they differ, their targets, and that size; up
    to ``limit`` images."""
    xs, targets = [], []
    for x, t in batches.epoch(0):
        for i in range(len(x)):
            one = x[i : i + 1]
            size = size or tuple(one.shape[-2:])
            if tuple(one.shape[-2:]) != size:
                one = F.interpolate(one, size=size, mode="bilinear", align_corners=False)
            xs.append(np.asarray(one, dtype=np.float32))
            targets.append(t[i])
            if limit is not None and len(targets) >= limit:
                return np.concatenate(xs), targets, size
    if not xs:
        raise QuantizationError("a split with no images")
    return np.concatenate(xs), targets, size


# ----------------------------------------------------------------------------------------------- scoring
def _run(session, x: np.ndarray, batch: int):
    name = session.get_inputs()[0].name
    for i in range(0, len(x), batch):
        yield i, session.run(None, {name: x[i : i + batch]})[0]


def _detection_metrics(session, x: np.ndarray, targets: list, meta) -> dict:
    """COCO metrics of an exported detector (decoded outputs, host NMS)."""
    from mnv2.models.ssdlite import SSDLiteConfig, nms_decoded
    from mnv2.tasks import get_task

    head = SSDLiteConfig.from_dict(meta.head, "checkpoint head")
    ev = get_task("detection").evaluator(list(meta.class_names or []))
    for i, decoded in _run(session, x, 16):
        ev.update({"detections": nms_decoded(torch.from_numpy(decoded), head)}, targets[i : i + len(decoded)])
    m = ev.compute()
    return {k: m[k] for k in ("mAP", "mAP50", "mAP75")}


def _segmentation_metrics(session, x: np.ndarray, masks: list, meta) -> dict:
    """mIoU and pixel accuracy of an exported segmenter; logits resized to each mask's size (bilinear)."""
    from mnv2.tasks import get_task

    ev = get_task("segmentation").evaluator(list(meta.class_names or []))
    for i, logits in _run(session, x, 4):
        for j, scores in enumerate(torch.from_numpy(logits)):
            mask = torch.as_tensor(masks[i + j])
            scores = F.interpolate(scores[None], size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
            ev.update(scores, mask[None])
    m = ev.compute()
    return {k: m[k] for k in ("mIoU", "pixel_acc")}


@dataclass(frozen=True)
class _TaskInt8:
    metric: str
    score: Callable[[Any, np.ndarray, list, Any], dict]
    keep_float: Callable[[Any], list[str]] | None


TASKS = {
    # what each model's measurement needed (BENCHMARKS.md): the detector its stem conv (block 0 too measured COCO mAP
    # 0.35 points down but mAP@0.5 1.37), the segmenter its stem and block 0
    "detection": _TaskInt8("mAP", _detection_metrics, functools.partial(float_ends, stem_convs=1)),
    "segmentation": _TaskInt8("mIoU", _segmentation_metrics, functools.partial(float_ends, stem_convs=3)),
}


def quantize_task(
    model,
    out: str | Path,
    data: str,
    eval_data: str | None = None,
    method: str = "auto",
    num_calibration: int | None = None,
    num_selection: int = 32,
    threads: int | None = None,
    workers: int = 2,
    input_size: int | tuple[int, int] | None = None,
) -> TaskQuantizeReport:
    """INT8 ONNX of a detection or segmentation checkpoint: calibrate on ``data``'s train split, choose the range
    method by the task's metric on ``num_selection`` train images kept out of calibration, report fp32 vs INT8 on
    ``eval_data``'s val split (default ``data``'s).

    ``input_size`` (one side or ``(height, width)``): the graph's size; default the checkpoint's for a detector,
    the first eval image's for a segmenter."""
    from mnv2.tasks import eval_data_options, get_task

    t0 = time.perf_counter()
    meta = model.meta
    if meta.task not in TASKS:
        raise ConfigError(f"task INT8 covers {', '.join(TASKS)}, not {meta.task!r}")
    spec = TASKS[meta.task]
    if Path(out).suffix != ".onnx":
        raise ConfigError(f"{meta.task} INT8 is written as ONNX (QDQ): name the output .onnx, not {str(out)!r}")
    if method != "auto" and method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose from auto, {', '.join(METHODS)}")
    num_calibration = num_calibration or DEFAULT_CALIBRATION[meta.task]
    if method != "auto":  # nothing to choose between
        num_selection = 0
    task = get_task(meta.task)
    labels = eval_data_options(meta)  # read as training did (CamVid: ignore index 11)
    val, _, _ = task.load_eval_data(eval_data or data, meta.preprocessing, 8, split="val", workers=workers, **labels)
    if input_size is not None:
        size = size_hw(input_size)
    else:  # a segmenter's val images keep their own size: the first one's is the graph's
        size = None if meta.task == "segmentation" else size_hw(meta.preprocessing.input_size)
    x_val, t_val, size = _batches(val, size)
    train, _, _ = task.load_eval_data(data, meta.preprocessing, 8, split="train", workers=workers, **labels)
    x_train, t_train, _ = _batches(train, size, num_calibration + num_selection)
    if len(x_train) <= num_selection:
        raise QuantizationError(f"{data!r}: {len(x_train)} train images; choosing a method (--method auto) holds back "
                                f"{num_selection} and calibration needs more: name a --method")  # fmt: skip
    perm = np.random.default_rng(0).permutation(len(x_train))
    # ONNX Runtime's histogram calibrators stack the batches' activations: equal batches of CALIB_BATCH images
    sel, cal = perm[:num_selection], perm[num_selection:]
    cal = cal[: max(1, len(cal) // CALIB_BATCH) * CALIB_BATCH] if len(cal) >= CALIB_BATCH else cal
    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "fp32.onnx"
        export_onnx(model, fp32, ExportOptions(fold_bn=True, dynamic_batch=True, input_size=size))
        candidates = {}
        for m in AUTO_ORDER if method == "auto" else (method,):
            path = Path(d) / f"int8-{m}.onnx"
            quantize_onnx_static(fp32, path, x_train[cal], m, batch=min(CALIB_BATCH, len(cal)),
                                 keep_float=spec.keep_float)  # fmt: skip
            if method == "auto":
                sel_targets = [t_train[i] for i in sel]
                candidates[m] = spec.score(ort_session(path, threads), x_train[sel], sel_targets, meta)[spec.metric]
        chosen = max(candidates, key=candidates.get) if candidates else method
        int8 = Path(d) / f"int8-{chosen}.onnx"
        f = spec.score(ort_session(fp32, threads), x_val, t_val, meta)
        q = spec.score(ort_session(int8, threads), x_val, t_val, meta)
        drop = {k: round(100 * (f[k] - q[k]), 2) for k in f}
        report = TaskQuantizeReport(str(out), meta.task, chosen, spec.metric, f, q, drop, len(cal), len(sel),
                                    len(x_val), list(size), candidates)  # fmt: skip
        report.seconds = time.perf_counter() - t0
        _copy_metadata(fp32, int8, {"quantization": json.dumps(report.to_dict()), "precision": "int8"})
        data_bytes = int8.read_bytes()
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data_bytes))
    return report
