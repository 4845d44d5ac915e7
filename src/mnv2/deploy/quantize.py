"""INT8 post-training quantization that keeps accuracy, for every task, with an fp32-vs-INT8 report on held-out data.

One pipeline for classifiers, detectors and segmenters (``mnv2 quantize``): read the data through the task's own
reader, calibrate the activation ranges, choose the range method by the task's own metric on the selection images,
write the INT8 file, and report fp32 vs INT8 on held-out data in one :class:`QuantizeReport`. What differs between
tasks (how a graph's outputs are scored, which ends stay fp32, which formats, how many calibration images) is the
task's :class:`mnv2.tasks.base.Int8Spec` (``Task.int8``); nothing here names a task.

Why MobileNetV2 INT8 often collapses, and what this module does about each (../shared/reference/users.md §1.4):

- per-tensor weight scales on depthwise convs (14% vs 69% top-1 in Edgecortix#5): weights are quantized
  **per output channel** (symmetric int8), after **BatchNorm is folded** into the convs, so each channel's
  γ/σ lands in its own scale;
- MinMax activation ranges let one outlier stretch the grid (vision#2849): the activation-range method is
  **chosen by measurement** among MinMax / Percentile / Entropy / Distribution on images kept out of calibration
  (:data:`SELECTION_IMAGES`); ``auto`` never assumes MinMax;
- the linear bottleneck (§3.2) is signed: activations are **asymmetric uint8** (a zero point), so negative
  projection outputs keep their half of the grid;
- ReLU6 (0, 6) clipping is kept as the quantization range of the conv it follows (ORT's QDQ quantizer drops the
  Clip when the range represents it), as tf#52583 restored;
- detectors and segmenters keep two small ends fp32 (:func:`float_ends`): the start of the network, so the image is
  never quantized, and what follows the last convolutions (box decoding, the logits' upsampling).

Two output formats, chosen by the file name (a task offers those of ``Int8Spec.formats``):

- ``.onnx``: ONNX Runtime's static QDQ quantizer (``onnxruntime.quantization``); a standard QDQ file that ONNX
  Runtime and OpenVINO both run with int8 kernels (VNNI).
- ``.tflite`` (classifiers): PyTorch 2 export quantization with litert-torch's quantizer (what LiteRT documents for
  PyTorch models), converted by litert-torch to a fully int8 TFLite file for phones, run by LiteRT's XNNPACK int8
  kernels. Weights per channel (symmetric int8), activations int8 with a zero point. Range methods: ``histogram``
  (HistogramObserver: the range that minimises the L2 quantization error of a 2048-bin histogram) and ``minmax``,
  chosen by measurement as above. Float NCHW in and float out, like the fp32 TFLite export; the metadata goes to
  ``<file>.json`` beside it. Detectors and segmenters have no TFLite INT8: that path cannot keep their ends fp32.

Data: a dataset as ``mnv2 eval`` names it (read by the task's ``load_eval_data`` with the checkpoint's
preprocessing), or an iterable of ``(x, targets)`` batches with ``x`` a preprocessed float NCHW batch (numpy or
torch), exactly what the model's forward takes, and ``targets`` what the task's evaluator takes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnv2.deploy.exporters.onnx import METADATA_PREFIX, ExportOptions, export_onnx, ort_session, size_hw
from mnv2.errors import ConfigError, Mnv2Error
from mnv2.files import atomic_write
from mnv2.typed import option
from mnv2.weights.checkpoint import CheckpointMeta, load_checkpoint

FORMATS = ("onnx", "tflite")
METHODS = ("minmax", "percentile", "entropy", "distribution")
# Tried by ``method="auto"`` in this order. The winner has the best score on the selection images: the task's
# agreement with fp32 where it has one (a classifier's top class: the quantity quantization should preserve, and less
# noisy on few images than top-1 itself), then the task's own metric, then the earlier entry. MinMax is last on
# purpose (vision#2849) but measured like the rest.
AUTO_ORDER = ("percentile", "entropy", "distribution", "minmax")
TFLITE_METHODS = ("histogram", "minmax")
TFLITE_AUTO_ORDER = TFLITE_METHODS  # as for ONNX: MinMax last
# The selection set, one for every task: the first SELECTION_IMAGES of a seeded permutation (numpy
# ``default_rng(0)``) of the images read from the calibration data, kept out of calibration; each candidate method is
# scored on them and the best is kept. A fixed count rather than a share of what was read (the classifier's former
# 25 %): the selection is there to reject a method that collapses (ORT's Distribution gave 17 % top-1 on
# Fashion-MNIST where the others gave 94 %, BENCHMARKS.md), which 32 images show as plainly as 512, while
# differences within a point are below the resolution of either. A count also bounds what every task reads and
# keeps: 32 CamVid images at 480x360 are 66 MB of input; a quarter of its 367 train images would be three times that.
SELECTION_IMAGES = 32
# Calibration batches. ONNX Runtime's histogram calibrators stack the batches' activations, so the calibration images
# are cut to whole batches; small ones, since a full-resolution segmentation image's activations are large.
CALIB_BATCH = 8
READ_BATCH = 8  # images per batch while reading named data (full-resolution segmentation images)
# The global average pool as torch.export writes it (``AdaptiveAvgPool2d(1)`` → ``mean.dim``); see _litert_quantizer
GLOBAL_POOL_OPS = (torch.ops.aten.mean.dim, torch.ops.aten.adaptive_avg_pool2d.default)
# ORT's default 99.999th percentile: clips the rare outliers of ReLU6-free projection outputs, keeps the rest.
PERCENTILE = 99.999


class QuantizationError(Mnv2Error):
    """Quantization could not run on the given model or data, or its output failed a consistency check."""


@dataclass
class MethodResult:
    """One candidate range method scored on the selection images. The task's metrics read as attributes too
    (``result.top1``, ``result.mAP50``)."""

    method: str
    metrics: dict[str, float | None]
    agreement: float | None = None  # % of samples where INT8's answer equals fp32's (where the task has one)

    def __getattr__(self, name: str) -> Any:
        metrics = self.__dict__.get("metrics") or {}
        if name in metrics:
            return metrics[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict:
        return {"method": self.method, **self.metrics, "agreement": self.agreement}


@dataclass
class QuantizeReport:
    """What ``mnv2 quantize`` did to a model of any task, and what it cost in that task's metrics.

    ``fp32`` and ``int8`` hold the task's metrics (``Int8Spec.metrics``) on the eval images; ``metric`` is the one the
    method was chosen by, the task evaluator's ``best`` (classification ``top1``, detection ``mAP50``, segmentation
    ``mIoU``), and ``drop`` is its fp32 − INT8 in points (``drops``: every metric's). A metric also reads as an
    attribute and a ``to_dict`` key prefixed by its side: ``report.fp32_top1``, ``report.int8_mAP50``.
    """

    path: str
    task: str
    output_format: str
    method: str
    metric: str
    fp32: dict[str, float | None]
    int8: dict[str, float | None]
    drop: float | None  # fp32 - INT8 of ``metric``, in points
    drops: dict[str, float | None]  # metric -> fp32 - INT8, in points
    agreement: float | None  # on the eval images, where the task has a per-sample answer
    per_channel: bool
    bn_folded: bool
    n_calibration: int
    n_selection: int
    n_eval: int
    eval_split: str
    input_hw: list[int]
    candidates: list[MethodResult] = field(default_factory=list)
    fp32_bytes: int | None = None  # the fp32 ONNX graph the INT8 one was made from (ONNX only)
    int8_bytes: int = 0
    notes: list[str] = field(default_factory=list)  # what the data readers reported (skipped files, …)
    seconds: float = 0.0

    def __getattr__(self, name: str) -> Any:
        side, _, metric = name.partition("_")
        values = self.__dict__.get(side) if side in ("fp32", "int8") else None
        if values is not None and metric in values:
            return values[metric]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["candidates"] = [c.to_dict() for c in self.candidates]
        out.update({f"fp32_{k}": v for k, v in self.fp32.items()})
        out.update({f"int8_{k}": v for k, v in self.int8.items()})
        return out

    def format(self) -> str:
        from mnv2.tasks import get_task

        value = get_task(self.task).present.format_value
        agree = any(c.agreement is not None for c in self.candidates)
        lines = []
        if self.candidates:
            head = f"{'method':<14}{self.metric:>9}" + (f"{'agree %':>9}" if agree else "")
            lines.append(f"{head}   (selection: {self.n_selection} images held back from calibration)")
            for c in self.candidates:
                row = f"{c.method:<14}{_shown(value, c.metrics[self.metric]):>9}"
                row += f"{c.agreement:>9.2f}" if agree and c.agreement is not None else ""
                lines.append(row + ("  <- chosen" if c.method == self.method else ""))
        fp32 = " ".join(f"{k} {_shown(value, v).strip()}" for k, v in self.fp32.items())
        int8 = " ".join(f"{k} {_shown(value, v).strip()}" for k, v in self.int8.items())
        h, w = self.input_hw
        line = f"{self.eval_split} (n={self.n_eval}, {w}x{h}): fp32 {fp32}; INT8 {int8}"
        lines.append(line + (f"; agreement {self.agreement:.2f}%" if self.agreement is not None else ""))
        lines.append(
            "drop: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:+.2f}'} points" for k, v in self.drops.items())
        )
        size = f"{self.int8_bytes / 1e6:.2f} MB" + (f", fp32 {self.fp32_bytes / 1e6:.2f} MB" if self.fp32_bytes else "")
        lines.append(f"wrote {self.path} ({size})")
        return "\n".join(lines)


def _shown(value: Callable[[float], str], v: float | None) -> str:
    return "n/a" if v is None else value(v)


def read_batches(
    data: Iterable, size: tuple[int, int] | None = None, limit: int | None = None
) -> tuple[np.ndarray, list, tuple[int, int]]:
    """Collect ``(x, targets)`` batches (or a reader's ``Batches``) into one float NCHW array, a list of per-image
    targets and the images' ``(height, width)``: images resized (bilinear) to ``size`` where they differ (default:
    the first image's), at most ``limit`` of them."""
    xs, targets, n = [], [], 0
    for item in data.epoch(0) if hasattr(data, "epoch") else data:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise QuantizationError("data must yield (x, targets) pairs: x a preprocessed float NCHW batch")
        x, t = item
        if x.ndim != 4:
            raise QuantizationError(f"expected NCHW batches, got an array of shape {tuple(x.shape)}")
        size = size or tuple(int(v) for v in x.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(torch.as_tensor(x).float(), size=size, mode="bilinear", align_corners=False)
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        xs.append(x.astype(np.float32, copy=False))
        targets += [t[i] for i in range(len(x))]
        n += len(x)
        if limit is not None and n >= limit:
            break
    if not xs:
        raise QuantizationError("no data: the calibration/evaluation data yielded no images")
    x = np.concatenate(xs)
    return (x[:limit], targets[:limit], size) if limit is not None else (x, targets, size)


def materialize(data: Iterable, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Collect an iterable of ``(x, labels)`` batches into two arrays (at most ``limit`` samples)."""
    x, targets, _ = read_batches(data, None, limit)
    return x, np.asarray([int(t) for t in targets], dtype=np.int64)


def predict_onnx(session, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Model outputs for ``x`` through an ONNX Runtime session, in batches."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


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


def float_tail(graph) -> list[str]:
    """Names of the nodes between an ONNX graph's last convolutions and its outputs (a detector's box decoding:
    Exp, Mul, Add, Concat, Softmax …; a segmenter's logits upsampling).

    Why: a uint8 tensor holds 256 levels over its range, so box corners quantized per tensor would move in steps of
    1/255 of the image (1.3 px at 320) and a segmenter's logits in steps of 1/255 of their range; in fp32 the tail
    costs a few element-wise ops, while the convolutions, where the time goes, stay int8. (On the raccoon detector
    it measured within noise, COCO mAP 0.441 with and without; the network's start was the loss, :func:`float_stem`.)
    """
    producer = {o: n for n in graph.node for o in n.output}
    tail, todo, seen = [], [o.name for o in graph.output], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type == "Conv":
            continue
        seen.add(node.name)
        tail.append(node.name)
        todo += list(node.input)
    return tail


def float_stem(graph, convs: int = 3) -> list[str]:
    """Names of an ONNX graph's nodes before its ``convs + 1``-th convolution: MobileNetV2's stem conv and its first
    inverted residual block (Table 2's first two rows: 3x3 conv, then depthwise 3x3 + linear 1x1 to 16 channels),
    kept fp32, so the image itself is never quantized either.

    Why: keeping one region at a time in fp32 (BENCHMARKS.md) found the loss at the start of the network. The raccoon
    detector's COCO mAP: 0.441 INT8 → 0.488 with the stem fp32 (fp32 0.490). The CamVid segmenter's mIoU: 0.611 →
    0.633 with block 0 fp32 (fp32 0.628), while any later block left it at 0.603–0.613. Block 0's 16-channel linear
    output is the narrowest tensor of the network, its per-tensor uint8 range the coarsest. Both hold ~3 % of the
    multiply-adds at 224 px.
    """
    names, seen = [], 0
    for n in graph.node:  # ONNX graphs are stored in topological order
        if n.op_type == "Conv":
            seen += 1
            if seen > convs:
                break
        names.append(n.name)
    return names if seen else []


def float_ends(graph, stem_convs: int = 3) -> list[str]:
    """The start (:func:`float_stem`, ``stem_convs`` convolutions) and the tail after the last convolutions
    (:func:`float_tail`): what the task INT8 of detectors and segmenters keeps fp32."""
    return float_stem(graph, stem_convs) + float_tail(graph)


def quantize_onnx_static(
    fp32_path: str | Path,
    out: str | Path,
    calibration: np.ndarray,
    method: str = "percentile",
    per_channel: bool = True,
    batch: int = 32,
    keep_float: Callable[[Any], list[str]] | None = None,
) -> Path:
    """Static QDQ INT8 quantization of an fp32 ONNX file with ONNX Runtime.

    Weights: int8 symmetric, per output channel. Activations: uint8 asymmetric, ranges from ``method`` over
    ``calibration`` (a preprocessed float NCHW array). ``keep_float(graph)`` names nodes left in fp32 (e.g.
    :func:`float_tail`).
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

        graph = onnx.load(str(pre), load_external_data=False).graph
        name = graph.input[0].name
        quantize_static(
            str(pre),
            str(Path(d) / "int8.onnx"),
            reader_cls(name, calibration, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calib,
            nodes_to_exclude=keep_float(graph) if keep_float else [],
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


def _litert_quantizer(config):
    """litert-torch's ``PT2EQuantizer`` with ``config``, plus annotations for the residual adds (paper §3.3) and the
    global pool.

    Why the adds: litert-torch 0.10 finds adds through the FX ``source_fn_stack`` metadata, which ``torch.export``
    in torch 2.13 no longer records (only ``torch_fn``), so it left every shortcut add unannotated. The TFLite file
    then ran each one in float, ``DEQUANTIZE``, ``ADD``, ``QUANTIZE`` (9 of MobileNetV2's 10). Annotating the aten op
    the way litert-torch's own ``add`` annotator would (int8 inputs and output, the config's activation spec) makes
    them int8 ``ADD`` ops (BENCHMARKS.md, INT8 TFLite).

    Why the pool: its own annotator misses it for the same reason, and litert-torch's fallback gives the mean its
    input's scale at both ends, while the classifier observes its input at another scale. The converter then
    dropped the requantization between the two (TFLite ``MEAN`` → ``FULLY_CONNECTED``), so the classifier read
    its input at the wrong scale: its int8 bias scale came out 0.11x input x weight scale, and Fashion-MNIST top-1
    fell from 94.9 % to 18 %. Here the mean keeps its input's scale on the way in and gets the config's output
    spec, the classifier's input spec, on the way out: one observer, and ``MEAN`` requantizes (int8 ``MEAN`` may
    change scale). :func:`check_tflite_bias_scales` catches the bug if it comes back.
    """
    import torch.fx
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    class _Quantizer(PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.target in GLOBAL_POOL_OPS and isinstance(node.args[0], torch.fx.Node):
                    src = node.args[0].meta.get("quantization_annotation")
                    shared = src is not None and src.output_qspec is not None  # as litert-torch's pool annotator
                    in_spec = SharedQuantizationSpec(node.args[0]) if shared else get_input_act_qspec(config)
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={node.args[0]: in_spec},
                        output_qspec=get_output_act_qspec(config),
                        _annotated=True,
                    )
                if node.target is torch.ops.aten.add.Tensor and "quantization_annotation" not in node.meta:
                    inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map=dict.fromkeys(inputs, get_input_act_qspec(config)),
                        output_qspec=get_output_act_qspec(config),
                        _annotated=True,
                    )
            return model

    return _Quantizer().set_global(config)


def quantize_tflite_static(
    model: nn.Module, out: str | Path, calibration: np.ndarray, method: str = "histogram", per_channel: bool = True
) -> Path:
    """Static INT8 TFLite of a BN-folded fp32 ``model`` via PT2E quantization and litert-torch.

    Weights: int8 symmetric, per output channel. Activations: int8 asymmetric, ranges from ``method``
    (:data:`TFLITE_METHODS`) over ``calibration`` (a preprocessed float NCHW array). Batch 1, static shapes (the
    interpreter resizes the batch at run time).
    """
    import dataclasses

    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if method not in TFLITE_METHODS:
        raise ConfigError(f"unknown TFLite calibration method {method!r}; choose from {', '.join(TFLITE_METHODS)}")
    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)  # histogram activations
    if method == "minmax":
        act = dataclasses.replace(
            config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12)
        )
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    quantizer = _litert_quantizer(config)
    example = (torch.from_numpy(np.ascontiguousarray(calibration[:1])),)
    model = model.eval()
    with _quiet(), torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
        for i in range(len(calibration)):  # batch 1: the exported graph is specialised to the example's shape
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i : i + 1])))
        converted = convert_pt2e(prepared, fold_quantize=False)
        edge = litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        with tempfile.TemporaryDirectory() as d:
            edge.export(str(Path(d) / "int8.tflite"))
            data = (Path(d) / "int8.tflite").read_bytes()
    check_tflite_bias_scales(data)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return Path(out)


# TFLite's quantization spec: an int8 conv/FC's int32 bias has scale input_scale x weight_scale (per channel) and
# zero point 0 (https://ai.google.dev/edge/litert/models/quantization_spec).
BIAS_SCALED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def check_tflite_bias_scales(model: bytes | str | Path, rtol: float = 1e-3) -> int:
    """Raise :class:`QuantizationError` if an int8 conv/FC of a TFLite file breaks bias scale = input x weight scale.

    A converter that loses a requantization between two ops leaves the consumer reading its input at the
    producer's scale while its bias was quantized for the other one: the file runs and silently computes
    something else (litert-torch 0.10 after ``MEAN``, see :func:`_litert_quantizer`). Returns how many ops
    were checked.
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model) if isinstance(model, bytes) else Interpreter(str(model))
    details = {t["index"]: t for t in interp.get_tensor_details()}
    checked = 0
    for op in interp._get_ops_details():  # the public API has no op list; this is what the LiteRT tools use
        if op["op_name"] not in BIAS_SCALED_OPS or len(op["inputs"]) < 3 or op["inputs"][2] < 0:
            continue
        x, w, b = (details[i] for i in op["inputs"][:3])
        if b["dtype"] != np.int32:  # a float op (not quantized): nothing to check
            continue
        s_in, s_w, s_b = (t["quantization_parameters"]["scales"] for t in (x, w, b))
        expected = s_in * s_w
        if not np.allclose(s_b, expected, rtol=rtol, atol=0):
            ratio = float(np.median(s_b / expected))
            raise QuantizationError(
                f"the converter wrote an inconsistent int8 {op['op_name']} (op {op['index']}, output "
                f"{details[op['outputs'][0]]['name']!r}): its bias scale is {ratio:.3g}x input x weight scale, so "
                "it would compute with the wrong scale. A requantization before it was lost in conversion"
            )
        checked += 1
    return checked


def predict_tflite(path: str | Path, x: np.ndarray, batch: int = 64, threads: int | None = None) -> np.ndarray:
    """Model outputs for ``x`` through LiteRT's interpreter (XNNPACK), in batches."""
    from mnv2.deploy.runtime.engines import open_file_engine

    engine = open_file_engine("litert", path, "fp32", threads)
    return np.concatenate([engine(x[i : i + batch]) for i in range(0, len(x), batch)])


def onnx_runner(session) -> Callable[[np.ndarray], np.ndarray]:
    """A batch in, the first output out, through an ONNX Runtime session."""
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


@dataclass
class Scores:
    """A graph's scores from :func:`task_metrics`: the task's metrics, the name of its evaluator's ``best`` and,
    when asked for, the outputs themselves."""

    metrics: dict[str, float | None]
    best: str
    outputs: np.ndarray | None = None


def task_metrics(
    task, run: Callable[[np.ndarray], Any], x: np.ndarray, targets: list, meta: CheckpointMeta,
    class_names: list[str] | None = None, keep_outputs: bool = False,
) -> Scores:  # fmt: skip
    """Score a graph with the task's own evaluator: ``run`` (a batch of ``x`` in, the graph's outputs out) over
    ``x`` in batches of ``task.int8.batch``, each batch's outputs and ``targets`` fed through ``task.int8.update``.
    The metrics are ``task.int8.metrics`` and the evaluator's ``best``; ``class_names`` default to the outputs'
    indices (a classifier saved without names)."""
    spec = task.int8
    evaluator, kept = None, []
    for i in range(0, len(x), spec.batch):
        outputs = np.asarray(run(x[i : i + spec.batch]))
        if evaluator is None:
            evaluator = task.evaluator(list(class_names or [str(c) for c in range(outputs.shape[1])]))
        spec.update(evaluator, outputs, targets[i : i + len(outputs)], meta)
        if keep_outputs:
            kept.append(outputs)
    if evaluator is None:
        raise QuantizationError("no images to score")
    result = evaluator.compute()
    names = spec.metrics if evaluator.best in spec.metrics else (evaluator.best, *spec.metrics)
    metrics = {k: None if result.get(k) is None else float(result[k]) for k in names}
    return Scores(metrics, evaluator.best, np.concatenate(kept) if keep_outputs else None)


class _OnnxBackend:
    """fp32 reference and INT8 candidates as ONNX files run by ONNX Runtime."""

    methods, auto_order, suffix = METHODS, AUTO_ORDER, ".onnx"

    def __init__(
        self, model: nn.Module, meta: CheckpointMeta, workdir: Path, threads: int | None,
        input_size: tuple[int, int] | None, keep_float: Callable[[Any], list[str]] | None,
    ) -> None:  # fmt: skip
        self.fp32_path, self.threads, self.keep_float = workdir / "fp32.onnx", threads, keep_float
        options = ExportOptions(fold_bn=True, dynamic_batch=True, input_size=input_size)
        export_onnx(model, self.fp32_path, options, meta=meta)
        self.fp32_session = ort_session(self.fp32_path, threads)
        self.fp32_bytes: int | None = self.fp32_path.stat().st_size

    def fp32(self) -> Callable[[np.ndarray], np.ndarray]:
        return onnx_runner(self.fp32_session)

    def make(self, method: str, calibration: np.ndarray, path: Path, per_channel: bool) -> None:
        batch = min(CALIB_BATCH, len(calibration))
        quantize_onnx_static(self.fp32_path, path, calibration, method, per_channel, batch, self.keep_float)

    def run(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        return onnx_runner(ort_session(path, self.threads))

    def finish(self, path: Path, out: str | Path, summary: dict) -> None:
        _copy_metadata(self.fp32_path, path, {"quantization": json.dumps(summary), "precision": "int8"})
        data = path.read_bytes()
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))


class _TfliteBackend:
    """fp32 reference: the BN-folded torch model (what the fp32 TFLite export matches to 1e-4); INT8 candidates as
    TFLite files run by LiteRT."""

    methods, auto_order, suffix = TFLITE_METHODS, TFLITE_AUTO_ORDER, ".tflite"
    fp32_bytes = None  # no fp32 file is made

    def __init__(
        self, model: nn.Module, meta: CheckpointMeta, workdir: Path, threads: int | None,
        input_size: tuple[int, int] | None, keep_float: Callable[[Any], list[str]] | None,
    ) -> None:  # fmt: skip
        from mnv2.deploy.exporters.edge import require_package
        from mnv2.deploy.exporters.onnx import plan_export

        if keep_float is not None:  # a task's Int8Spec offers TFLite only where nothing stays fp32
            raise ConfigError("TFLite INT8 cannot keep parts of the graph fp32: write this model's INT8 as .onnx")
        require_package("litert_torch", "litert-torch", "tflite")
        require_package("ai_edge_litert", "ai-edge-litert", "tflite")
        self.options = ExportOptions.for_format("tflite", input_size=input_size)
        plan = plan_export(model, meta, self.options, "tflite")
        self.meta, self.spec, self.model = plan.meta, plan.io, plan.module
        self.threads = threads

    def fp32(self) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return self.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()

        return run

    def make(self, method: str, calibration: np.ndarray, path: Path, per_channel: bool) -> None:
        quantize_tflite_static(self.model, path, calibration, method, per_channel)

    def run(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        from mnv2.deploy.runtime.engines import open_file_engine

        return open_file_engine("litert", path, "fp32", self.threads)

    def finish(self, path: Path, out: str | Path, summary: dict) -> None:
        from mnv2.deploy.exporters.onnx import metadata_props

        extra = {"quantization": json.dumps(summary), "precision": "int8"}
        props = metadata_props(self.meta, self.spec, self.options, extra)
        data = path.read_bytes()
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
        atomic_write(Path(str(out) + ".json"), lambda tmp: Path(tmp).write_text(json.dumps(props, indent=1)))


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


FORMAT_NAMES = {"onnx": "ONNX (QDQ)", "tflite": "TFLite"}


def _rank(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


@dataclass
class _Sets:
    """The images of one quantization: calibration, selection (kept out of calibration) and evaluation."""

    x_cal: np.ndarray
    x_sel: np.ndarray
    t_sel: list
    x_ev: np.ndarray
    t_ev: list
    eval_split: str
    size: tuple[int, int]
    classes: list[str] | None
    notes: list[str]


def _read_sets(
    task, meta: CheckpointMeta, calibration, held_out, method: str, num_calibration: int | None, num_selection: int,
    size: tuple[int, int] | None, max_calibration: int | None, max_eval: int | None, workers: int,
) -> _Sets:  # fmt: skip
    """Read the eval images, then the calibration images, and split off the selection set (see :func:`quantize`)."""
    from mnv2.tasks import eval_data_options

    spec = task.int8
    notes: list[str] = []
    classes = list(meta.class_names) if meta.class_names else None

    def read(data, split: str | None, limit: int | None, size: tuple[int, int] | None):
        nonlocal classes
        if not isinstance(data, (str, Path)):
            return read_batches(data, size, limit)
        batches, names, report = task.load_eval_data(
            str(data), meta.preprocessing, READ_BATCH, split=split, workers=workers, limit=limit,
            in_chans=meta.model_config.in_chans, **eval_data_options(meta),
        )  # fmt: skip
        if names is not None and classes is not None and list(names) != classes:
            raise ConfigError(f"{str(data)!r} has classes {list(names)[:5]}..., the checkpoint {classes[:5]}...")
        classes = classes or (list(names) if names is not None else None)
        if report.message():
            notes.append(f"{data}: {report.message()}")
        return read_batches(batches, size)

    named = isinstance(calibration, (str, Path))
    if held_out is None and named and spec.held_out(str(calibration)):
        held_out = calibration  # read from its held-out part: the reader's default split
    if held_out is not None:  # first: a segmenter's graph takes the first eval image's size
        x_ev, t_ev, size = read(held_out, None, max_eval, size)
    n_sel = num_selection if method == "auto" or held_out is None else 0
    if held_out is None and n_sel == 0:
        raise ConfigError("no held-out data and num_selection=0: nothing to report fp32 vs INT8 on")
    n_cal = num_calibration or spec.calibration_images
    limit = min(n_cal + n_sel, max_calibration) if max_calibration else n_cal + n_sel
    x_all, t_all, size = read(calibration, spec.calibration_split(str(calibration)) if named else None, limit, size)
    # the selection set (SELECTION_IMAGES): the first images of a seeded permutation; calibration the next ones
    perm = np.random.default_rng(0).permutation(len(x_all))
    sel, cal = perm[:n_sel], perm[n_sel:][:n_cal]
    if len(cal) >= CALIB_BATCH:
        cal = cal[: len(cal) // CALIB_BATCH * CALIB_BATCH]
    x_sel, t_sel = x_all[sel], [t_all[i] for i in sel]
    if held_out is None:
        x_ev, t_ev, eval_split = x_sel, t_sel, "selection split of the calibration data"
    else:
        eval_split = "held-out data"
    return _Sets(x_all[cal], x_sel, t_sel, x_ev, t_ev, eval_split, size, classes, notes)


@dataclass(frozen=True)
class QuantizeOptions:
    """How :func:`quantize` calibrates and chooses (``mnv2 quantize``'s flags; the data and the output are its
    arguments)."""

    method: str = option("auto", "auto (measure all); .onnx: percentile, entropy, distribution, minmax; .tflite: "
                         "histogram, minmax")  # fmt: skip
    num_calibration: int | None = option(None, "images used to calibrate ranges (default: the task's, classification "
                                         "512, detection 64, segmentation 32)", low=1)  # fmt: skip
    input_size: int | tuple[int, int] | None = option(
        None, "detection/segmentation: the graph's N or WIDTHxHEIGHT (default: the detector's size, the eval images')",
        kind="size",
    )  # fmt: skip
    max_calibration: int | None = option(2048, "images read from --calibration", low=1)
    max_eval: int | None = option(None, "images read from --eval (default all)", low=1)
    per_channel: bool = option(True, "per-tensor weight scales (to see depthwise collapse)", flag="--per-tensor",
                               invert=True)  # fmt: skip
    workers: int = option(2, "image-decoding worker processes for folders", low=0)


def quantize(
    model: nn.Module | str | Path,
    out: str | Path,
    calibration: str | Path | Iterable,
    held_out: str | Path | Iterable | None = None,
    method: str = "auto",
    num_calibration: int | None = None,
    num_selection: int = SELECTION_IMAGES,
    per_channel: bool = True,
    meta: CheckpointMeta | None = None,
    threads: int | None = None,
    fmt: str | None = None,
    input_size: int | tuple[int, int] | None = None,
    max_calibration: int | None = None,
    max_eval: int | None = None,
    workers: int = 2,
) -> QuantizeReport:
    """Quantize a model of any task to an INT8 file and report fp32 vs INT8 in the task's own metrics.

    Args:
        model: an mnv2 model or a checkpoint path; its task (``meta.task``) supplies the scoring, the fp32 ends and
            the defaults (``Task.int8``).
        out: the INT8 file to write: ``.onnx`` (QDQ, ONNX Runtime/OpenVINO) or ``.tflite`` (LiteRT; classifiers).
        calibration: data as ``mnv2 eval`` names it (``fashion-mnist``, a folder, an ``.npz``, a detection or
            segmentation dataset), read through the task's reader from its training part where it has one
            (``Int8Spec.calibration_split``); or ``(x, targets)`` batches. The selection images (below) are kept
            out of calibration.
        held_out: data (named, or batches) for the final fp32-vs-INT8 report, read from its held-out part (e.g. the
            test or val split). Default: ``calibration``'s held-out part where it has one apart from its training
            part (``Int8Spec.held_out``), else the selection images, and the report says so.
        method: ``auto`` (every method of the format, the best on the selection images kept) or one of
            :data:`METHODS` (ONNX) / :data:`TFLITE_METHODS` (TFLite).
        num_calibration: at most this many images calibrate the ranges (default ``Int8Spec.calibration_images``),
            cut to whole batches of :data:`CALIB_BATCH`.
        num_selection: the selection images (:data:`SELECTION_IMAGES`), used when there is a method to choose or no
            held-out data.
        per_channel: per-output-channel weight scales (per-tensor only to demonstrate the depthwise collapse).
        meta: the model's metadata when ``model`` carries none.
        fmt: ``onnx`` or ``tflite``; default from the suffix of ``out``.
        input_size: the graph's size, one side or ``(height, width)``, where the task allows another size
            (``Int8Spec.resizable``). Default: the checkpoint's, or the first eval image's for a task whose inputs
            keep their own size (a segmenter); images of another size are resized to it.
        max_calibration: at most this many images are read from named calibration data.
        max_eval: at most this many images are read from named held-out data (a seeded random subset).
        workers: image-decoding worker processes for named data.
    """
    from mnv2.tasks import TASK_NAMES, get_task

    t0 = time.perf_counter()
    if num_selection < 0:
        raise ConfigError(f"num_selection must be >= 0, got {num_selection!r}")
    if isinstance(model, (str, Path)):
        model = load_checkpoint(model)
    meta = meta or getattr(model, "meta", None)
    if meta is None:  # a bare classifier (an mnv2 MobileNetV2), as the exporters take it
        if not hasattr(model, "config"):
            raise ConfigError("quantizing a module that is not an mnv2 model needs its CheckpointMeta (meta=)")
        meta = CheckpointMeta(model_config=model.config)
    task = get_task(meta.task)
    spec = task.int8
    if spec is None:
        raise ConfigError(f"a {meta.task} model has no INT8 quantization")
    if input_size is not None and not spec.resizable:
        takes = [n for n in TASK_NAMES if (other := get_task(n).int8) is not None and other.resizable]
        raise ConfigError(f"--input-size is for {' and '.join(takes)} INT8; a {meta.task} model keeps its own size")
    if input_size is not None:
        size: tuple[int, int] | None = size_hw(input_size)
    else:  # a task whose inputs keep their own size (a segmenter): the first eval image's is the graph's
        size = size_hw(meta.preprocessing.input_size) if task.inference.fixed_size else None

    sets = _read_sets(task, meta, calibration, held_out, method, num_calibration, num_selection, size,
                      max_calibration, max_eval, workers)  # fmt: skip
    # The output's name is checked once the data could be read, as it always was for classifiers: a missing dataset
    # is the error a user sees first (tests/test_reliability.py); then the output; then whether the data suffices.
    fmt = fmt or Path(out).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"INT8 output {str(out)!r}: name it .onnx or .tflite (formats: {', '.join(FORMATS)})")
    if fmt not in spec.formats:
        names = " or ".join(FORMAT_NAMES[f] for f in spec.formats)
        raise ConfigError(f"{meta.task} INT8 is written as {names}: name the output "
                          f"{' or '.join('.' + f for f in spec.formats)}, not {str(out)!r}")  # fmt: skip
    backend_cls = _OnnxBackend if fmt == "onnx" else _TfliteBackend
    if method != "auto" and method not in backend_cls.methods:
        raise ConfigError(
            f"unknown calibration method {method!r} for {fmt}; choose from auto, {', '.join(backend_cls.methods)}"
        )
    if not len(sets.x_cal):  # every image read went to the selection set
        why = "choosing a method (method auto)" if method == "auto" else "the report (no held-out data)"
        raise QuantizationError(f"{len(sets.x_sel)} calibration images: {why} holds back {num_selection} and "
                                "calibration needs more; name a method, or give more data")  # fmt: skip
    keep_float = None
    if spec.float_stem_convs is not None:
        keep_float = functools.partial(float_ends, stem_convs=spec.float_stem_convs)

    candidates = list(backend_cls.auto_order) if method == "auto" else [method]
    agree = spec.agreement
    keep = agree is not None  # the outputs themselves, for the agreement
    with tempfile.TemporaryDirectory() as d:
        backend = backend_cls(model, meta, Path(d), threads, sets.size if spec.resizable else None, keep_float)

        def score(run) -> Scores:
            return task_metrics(task, run, sets.x_sel, sets.t_sel, meta, sets.classes, keep_outputs=keep)

        results: list[MethodResult] = []
        chosen, best = candidates[0], None
        reference = score(backend.fp32()) if method == "auto" else None
        for i, m in enumerate(candidates):
            path = Path(d) / f"int8-{m}{backend.suffix}"
            backend.make(m, sets.x_cal, path, per_channel)
            if reference is None:
                continue
            s = score(backend.run(path))
            a = agree(reference.outputs, s.outputs) if agree is not None else None
            results.append(MethodResult(m, s.metrics, a))
            key = (a if a is not None else 0.0, _rank(s.metrics[s.best]), -i)
            if best is None or key > best:
                best, chosen = key, m
        int8_path = Path(d) / f"int8-{chosen}{backend.suffix}"
        f, q = (task_metrics(task, run, sets.x_ev, sets.t_ev, meta, sets.classes, keep_outputs=keep)
                for run in (backend.fp32(), backend.run(int8_path)))  # fmt: skip
        drops = {
            k: None if f.metrics[k] is None or q.metrics[k] is None else spec.points * (f.metrics[k] - q.metrics[k])
            for k in f.metrics
        }
        report = QuantizeReport(
            path=str(out),
            task=meta.task,
            output_format=fmt,
            method=chosen,
            metric=f.best,
            fp32=f.metrics,
            int8=q.metrics,
            drop=drops[f.best],
            drops=drops,
            agreement=agree(f.outputs, q.outputs) if agree is not None else None,
            per_channel=per_channel,
            bn_folded=True,
            n_calibration=len(sets.x_cal),
            n_selection=len(sets.x_sel),
            n_eval=len(sets.x_ev),
            eval_split=sets.eval_split,
            input_hw=list(sets.size),
            candidates=results,
            fp32_bytes=backend.fp32_bytes,
            notes=sets.notes,
        )
        report.seconds = time.perf_counter() - t0
        summary = {k: v for k, v in report.to_dict().items() if k not in ("path", "int8_bytes")}
        backend.finish(int8_path, out, summary)
    report.int8_bytes = Path(out).stat().st_size
    return report
