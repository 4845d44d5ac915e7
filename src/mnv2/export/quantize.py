"""INT8 post-training quantization that keeps accuracy, with an fp32-vs-INT8 report on held-out data.

Why MobileNetV2 INT8 often collapses, and what this module does about each (../shared/reference/users.md §1.4):

- per-tensor weight scales on depthwise convs (14% vs 69% top-1 in Edgecortix#5): weights are quantized
  **per output channel** (symmetric int8), after **BatchNorm is folded** into the convs, so each channel's
  γ/σ lands in its own scale;
- MinMax activation ranges let one outlier stretch the grid (vision#2849): the activation-range method is
  **chosen by measurement** among MinMax / Percentile / Entropy / Distribution on a held-out split of the
  calibration data; ``auto`` never assumes MinMax;
- the linear bottleneck (§3.2) is signed: activations are **asymmetric uint8** (a zero point), so negative
  projection outputs keep their half of the grid;
- ReLU6 (0, 6) clipping is kept as the quantization range of the conv it follows (ORT's QDQ quantizer drops the
  Clip when the range represents it), as tf#52583 restored.

The engine is ONNX Runtime's static QDQ quantizer (``onnxruntime.quantization``): the result is a standard QDQ
ONNX file that ONNX Runtime and OpenVINO both run with int8 kernels (VNNI).

Data: ``calibration`` and ``held_out`` are iterables of ``(x, labels)`` with ``x`` a preprocessed float NCHW batch
(numpy or torch), exactly what the model's forward takes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnv2.checkpoint import CheckpointMeta, atomic_write, load_checkpoint
from mnv2.errors import ConfigError, Mnv2Error
from mnv2.export.onnx_export import METADATA_PREFIX, ExportOptions, export_onnx, ort_session

METHODS = ("minmax", "percentile", "entropy", "distribution")
# Tried by ``method="auto"`` in this order. The winner has the highest top-1 agreement with fp32 on the selection
# split (the quantity quantization should preserve, and less noisy on a few hundred images than top-1 itself),
# then the higher top-1, then the earlier entry. MinMax is last on purpose (vision#2849) but measured like the rest.
AUTO_ORDER = ("percentile", "entropy", "distribution", "minmax")
# ORT's default 99.999th percentile: clips the rare outliers of ReLU6-free projection outputs, keeps the rest.
PERCENTILE = 99.999


class QuantizationError(Mnv2Error):
    """Quantization could not run on the given model or data."""


@dataclass
class MethodResult:
    method: str
    top1: float
    agreement: float  # % of samples where INT8's top class equals fp32's


@dataclass
class QuantizeReport:
    """fp32 vs INT8 on held-out data, and how the calibration method was chosen."""

    path: str
    method: str
    per_channel: bool
    bn_folded: bool
    fp32_top1: float
    int8_top1: float
    drop: float  # fp32_top1 - int8_top1, points
    agreement: float
    n_calibration: int
    n_selection: int
    n_eval: int
    eval_split: str
    candidates: list[MethodResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{'method':<14}{'top-1 %':>9}{'agree %':>9}   (selection split, n={self.n_selection})"]
        for c in self.candidates:
            mark = "  <- chosen" if c.method == self.method else ""
            lines.append(f"{c.method:<14}{c.top1:>9.2f}{c.agreement:>9.2f}{mark}")
        lines.append(
            f"{self.eval_split} (n={self.n_eval}): fp32 top-1 {self.fp32_top1:.2f}%, INT8 top-1 {self.int8_top1:.2f}%"
            f" (drop {self.drop:+.2f} points), top-1 agreement {self.agreement:.2f}%"
        )
        lines.append(f"wrote {self.path}")
        return "\n".join(lines)


def materialize(data: Iterable, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Collect an iterable of ``(x, labels)`` batches into two arrays (at most ``limit`` samples)."""
    xs, ys, n = [], [], 0
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise QuantizationError("data must yield (x, labels) pairs: x a preprocessed float NCHW batch")
        x, y = item
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if x.ndim != 4:
            raise QuantizationError(f"expected NCHW batches, got an array of shape {x.shape}")
        xs.append(x.astype(np.float32, copy=False))
        ys.append(y.astype(np.int64, copy=False).reshape(-1))
        n += len(x)
        if limit is not None and n >= limit:
            break
    if not xs:
        raise QuantizationError("no data: the calibration/evaluation iterable yielded nothing")
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit is not None else (x, y)


def predict_onnx(session, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Model outputs for ``x`` through an ONNX Runtime session, in batches."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((outputs.argmax(1) == labels).mean() * 100.0)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean() * 100.0)


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over an array, in batches."""

    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        self.name, self.x, self.batch, self.i = name, x, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        out = {self.name: self.x[self.i : self.i + self.batch]}
        self.i += self.batch
        return out

    def rewind(self) -> None:
        self.i = 0


@contextlib.contextmanager
def _quiet():
    lg = logging.getLogger()
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        lg.setLevel(level)


def quantize_onnx_static(
    fp32_path: str | Path,
    out: str | Path,
    calibration: np.ndarray,
    method: str = "percentile",
    per_channel: bool = True,
    batch: int = 32,
) -> Path:
    """Static QDQ INT8 quantization of an fp32 ONNX file with ONNX Runtime.

    Weights: int8 symmetric, per output channel. Activations: uint8 asymmetric, ranges from ``method`` over
    ``calibration`` (a preprocessed float NCHW array).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)} or auto")
    calib = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
        "distribution": CalibrationMethod.Distribution,
    }[method]
    reader_cls = type("Reader", (_Reader, CalibrationDataReader), {})
    with tempfile.TemporaryDirectory() as d, _quiet():
        pre = Path(d) / "pre.onnx"
        # Shape inference + basic graph optimizations: what ORT's docs ask for before quantizing.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        import onnx

        name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
        quantize_static(
            str(pre),
            str(Path(d) / "int8.onnx"),
            reader_cls(name, calibration, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calib,
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "CalibPercentile": PERCENTILE,
                "CalibTensorRangeSymmetric": False,
            },
        )
        data = (Path(d) / "int8.onnx").read_bytes()
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return Path(out)


def _copy_metadata(src: str | Path, dst: str | Path, extra: dict[str, str]) -> None:
    import onnx

    s = onnx.load(str(src), load_external_data=False)
    d = onnx.load(str(dst), load_external_data=False)
    props = {p.key: p.value for p in s.metadata_props if p.key.startswith(METADATA_PREFIX)}
    props.update({METADATA_PREFIX + k: v for k, v in extra.items()})
    onnx.helper.set_model_props(d, props)
    d.producer_name = "mnv2"
    data = d.SerializeToString()
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(data))


def quantize(
    model: nn.Module | str | Path,
    out: str | Path,
    calibration: Iterable,
    held_out: Iterable | None = None,
    method: str = "auto",
    num_calibration: int = 512,
    selection_fraction: float = 0.25,
    per_channel: bool = True,
    meta: CheckpointMeta | None = None,
    threads: int | None = None,
) -> QuantizeReport:
    """Quantize a checkpoint (or model) to an INT8 QDQ ONNX file and report fp32 vs INT8 accuracy.

    Args:
        model: an mnv2 model or a checkpoint path.
        out: the INT8 ``.onnx`` to write.
        calibration: ``(x, labels)`` batches. With ``method="auto"``, a ``selection_fraction`` of it (disjoint
            from the calibration images) picks the method by agreement with fp32 (then top-1).
        held_out: ``(x, labels)`` batches for the final fp32-vs-INT8 report (e.g. the test split). Without it the
            report uses the selection split, and says so.
        method: ``auto`` (measure all of :data:`METHODS`) or one of them.
        num_calibration: at most this many images calibrate the ranges.
        per_channel: per-output-channel weight scales (per-tensor only to demonstrate the depthwise collapse).
    """
    t0 = time.perf_counter()
    if method != "auto" and method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose from auto, {', '.join(METHODS)}")
    if not 0 < selection_fraction < 1:
        raise ConfigError(f"selection_fraction must be in (0, 1), got {selection_fraction!r}")
    if isinstance(model, (str, Path)):
        model = load_checkpoint(model)
    x_all, y_all = materialize(calibration)
    if method == "auto" or held_out is None:
        n_sel = max(1, int(len(x_all) * selection_fraction))
        if len(x_all) - n_sel < 1:
            raise QuantizationError(f"need more than {len(x_all)} calibration images to hold some out")
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(x_all))
        sel, cal = perm[:n_sel], perm[n_sel:]
        x_sel, y_sel = x_all[sel], y_all[sel]
        x_cal = x_all[cal][:num_calibration]
    else:
        x_sel = y_sel = None
        x_cal = x_all[:num_calibration]
    candidates = list(AUTO_ORDER) if method == "auto" else [method]
    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "fp32.onnx"
        export_onnx(model, fp32, ExportOptions(fold_bn=True, dynamic_batch=True), meta=meta)
        fp32_sess = ort_session(fp32, threads)
        results: list[MethodResult] = []
        best: tuple[float, float, int] | None = None
        chosen = candidates[0]
        for i, m in enumerate(candidates):
            path = Path(d) / f"int8-{m}.onnx"
            quantize_onnx_static(fp32, path, x_cal, m, per_channel)
            if x_sel is None:
                continue
            q = predict_onnx(ort_session(path, threads), x_sel)
            f = predict_onnx(fp32_sess, x_sel)
            r = MethodResult(m, top1(q, y_sel), agreement(q, f))
            results.append(r)
            key = (r.agreement, r.top1, -i)
            if best is None or key > best:
                best, chosen = key, m
        int8_path = Path(d) / f"int8-{chosen}.onnx"
        if held_out is not None:
            x_ev, y_ev = materialize(held_out)
            split = "held-out data"
        else:
            x_ev, y_ev = x_sel, y_sel
            split = "selection split of the calibration data"
        f = predict_onnx(fp32_sess, x_ev)
        q = predict_onnx(ort_session(int8_path, threads), x_ev)
        report = QuantizeReport(
            path=str(out),
            method=chosen,
            per_channel=per_channel,
            bn_folded=True,
            fp32_top1=top1(f, y_ev),
            int8_top1=top1(q, y_ev),
            drop=top1(f, y_ev) - top1(q, y_ev),
            agreement=agreement(q, f),
            n_calibration=len(x_cal),
            n_selection=0 if x_sel is None else len(x_sel),
            n_eval=len(x_ev),
            eval_split=split,
            candidates=results,
        )
        report.seconds = time.perf_counter() - t0
        summary: dict[str, Any] = {k: v for k, v in report.to_dict().items() if k not in ("path",)}
        _copy_metadata(fp32, int8_path, {"quantization": json.dumps(summary), "precision": "int8"})
        data = int8_path.read_bytes()
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return report
