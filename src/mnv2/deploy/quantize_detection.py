"""INT8 for the SSDLite detector (§6.2; issue 15): ONNX Runtime static QDQ on the exported graph (boxes decoded in
it), calibrated on training images, the range method chosen by mAP@0.5 on a held-back part of them, and the
fp32-vs-INT8 COCO metrics on the eval split in the report.

The same recipe as the classifier's (``mnv2.deploy.quantize``: BN folded, per-channel int8 weights, asymmetric
uint8 activations), measured with the task's own evaluator instead of top-1: NMS runs on the host on both files'
decoded outputs, exactly as ``mnv2 predict`` and the engines run them.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mnv2.deploy.onnx_export import ExportOptions, export_onnx, ort_session
from mnv2.deploy.quantize import AUTO_ORDER, METHODS, QuantizationError, _copy_metadata, quantize_onnx_static
from mnv2.errors import ConfigError
from mnv2.weights.checkpoint import atomic_write

CALIB_BATCH = 8


@dataclass
class DetectionQuantizeReport:
    path: str
    method: str
    fp32: dict  # COCO metrics of the fp32 export on the eval split (mAP, mAP50, mAP75)
    int8: dict
    drop_mAP50: float  # points (x 100)
    drop_mAP: float
    n_calibration: int
    n_selection: int
    n_eval: int
    candidates: dict[str, float] = field(default_factory=dict)  # method -> mAP50 on the selection images
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{'method':<14}{'mAP50':>8}   (selection: {self.n_selection} held-back calibration images)"]
        for m, v in self.candidates.items():
            lines.append(f"{m:<14}{v:>8.3f}{'  <- chosen' if m == self.method else ''}")
        f, q = self.fp32, self.int8
        lines.append(f"eval split (n={self.n_eval}): fp32 mAP50 {f['mAP50']:.3f} mAP {f['mAP']:.3f}; INT8 mAP50 "
                     f"{q['mAP50']:.3f} mAP {q['mAP']:.3f}")  # fmt: skip
        lines.append(f"drop: mAP50 {self.drop_mAP50:+.2f} points, mAP {self.drop_mAP:+.2f} points")
        lines.append(f"wrote {self.path}")
        return "\n".join(lines)


def _arrays(batches, limit: int | None = None) -> tuple[np.ndarray, list[dict]]:
    xs, targets = [], []
    for x, t in batches.epoch(0):
        xs.append(np.asarray(x, dtype=np.float32))
        targets += t
        if limit is not None and len(targets) >= limit:
            break
    x = np.concatenate(xs)
    return (x[:limit], targets[:limit]) if limit is not None else (x, targets)


def _coco(session, x: np.ndarray, targets: list[dict], head, class_names: list[str], batch: int = 16) -> dict:
    """COCO metrics of an exported detector (decoded outputs, host NMS) on preprocessed images and their targets."""
    from mnv2.models.ssdlite import nms_decoded
    from mnv2.tasks import get_task

    ev = get_task("detection").evaluator(class_names)
    name = session.get_inputs()[0].name
    for i in range(0, len(x), batch):
        decoded = torch.from_numpy(session.run(None, {name: x[i : i + batch]})[0])
        ev.update({"detections": nms_decoded(decoded, head)}, targets[i : i + batch])
    m = ev.compute()
    return {k: m[k] for k in ("mAP", "mAP50", "mAP75")}


def quantize_detection(
    model,
    out: str | Path,
    data: str,
    eval_data: str | None = None,
    method: str = "auto",
    num_calibration: int = 128,
    num_selection: int = 32,
    threads: int | None = None,
    workers: int = 2,
) -> DetectionQuantizeReport:
    """INT8 ONNX of a detection checkpoint: calibrate on ``data``'s train split, choose the range method by mAP50 on
    ``num_selection`` train images kept out of calibration, report fp32 vs INT8 COCO metrics on ``eval_data``'s val
    split (default ``data``'s)."""
    from mnv2.models.ssdlite import SSDLiteConfig
    from mnv2.tasks import get_task

    t0 = time.perf_counter()
    if Path(out).suffix != ".onnx":
        raise ConfigError(f"detection INT8 is written as ONNX (QDQ): name the output .onnx, not {str(out)!r}")
    if method != "auto" and method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose from auto, {', '.join(METHODS)}")
    meta = model.meta
    task = get_task("detection")
    pre, names = meta.preprocessing, list(meta.class_names or [])
    head = SSDLiteConfig.from_dict(meta.head, "checkpoint head")
    train, _, _ = task.load_eval_data(data, pre, 16, split="train", workers=workers)
    x_train, t_train = _arrays(train, num_calibration + num_selection)
    if len(x_train) <= num_selection:
        raise QuantizationError(f"{data!r}: {len(x_train)} train images; calibration needs more than {num_selection}")
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x_train))
    # ONNX Runtime's histogram calibrators stack the batches' activations: equal batches of CALIB_BATCH images
    sel, cal = perm[:num_selection], perm[num_selection:]
    cal = cal[: max(1, len(cal) // CALIB_BATCH) * CALIB_BATCH] if len(cal) >= CALIB_BATCH else cal
    val, _, _ = task.load_eval_data(eval_data or data, pre, 16, split="val", workers=workers)
    x_val, t_val = _arrays(val)
    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "fp32.onnx"
        export_onnx(model, fp32, ExportOptions(fold_bn=True, dynamic_batch=True))
        candidates = {}
        for m in AUTO_ORDER if method == "auto" else (method,):
            path = Path(d) / f"int8-{m}.onnx"
            quantize_onnx_static(fp32, path, x_train[cal], m, batch=min(CALIB_BATCH, len(cal)))
            if method == "auto":
                sel_targets = [t_train[i] for i in sel]
                candidates[m] = _coco(ort_session(path, threads), x_train[sel], sel_targets, head, names)["mAP50"]
        chosen = max(candidates, key=candidates.get) if candidates else method
        int8 = Path(d) / f"int8-{chosen}.onnx"
        f = _coco(ort_session(fp32, threads), x_val, t_val, head, names)
        q = _coco(ort_session(int8, threads), x_val, t_val, head, names)
        report = DetectionQuantizeReport(str(out), chosen, f, q, round(100 * (f["mAP50"] - q["mAP50"]), 2),
                                         round(100 * (f["mAP"] - q["mAP"]), 2), len(cal), len(sel), len(x_val),
                                         candidates)  # fmt: skip
        report.seconds = time.perf_counter() - t0
        _copy_metadata(fp32, int8, {"quantization": json.dumps(report.to_dict()), "precision": "int8"})
        data_bytes = int8.read_bytes()
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data_bytes))
    return report
