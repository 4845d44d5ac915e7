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

Two output formats, chosen by the file name:

- ``.onnx``: ONNX Runtime's static QDQ quantizer (``onnxruntime.quantization``); a standard QDQ file that ONNX
  Runtime and OpenVINO both run with int8 kernels (VNNI).
- ``.tflite``: PyTorch 2 export quantization with litert-torch's quantizer (what LiteRT documents for PyTorch
  models), converted by litert-torch to a fully int8 TFLite file for phones, run by LiteRT's XNNPACK int8 kernels.
  Weights per channel (symmetric int8), activations int8 with a zero point. Range methods: ``histogram``
  (HistogramObserver: the range that minimises the L2 quantization error of a 2048-bin histogram) and ``minmax``,
  chosen by measurement as above. Float NCHW in and float out, like the fp32 TFLite export; the metadata goes to
  ``<file>.json`` beside it.

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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnv2.deploy.onnx_export import METADATA_PREFIX, ExportOptions, export_onnx, ort_session
from mnv2.errors import ConfigError, Mnv2Error
from mnv2.weights.checkpoint import CheckpointMeta, atomic_write, load_checkpoint

FORMATS = ("onnx", "tflite")
METHODS = ("minmax", "percentile", "entropy", "distribution")
# Tried by ``method="auto"`` in this order. The winner has the highest top-1 agreement with fp32 on the selection
# split (the quantity quantization should preserve, and less noisy on a few hundred images than top-1 itself),
# then the higher top-1, then the earlier entry. MinMax is last on purpose (vision#2849) but measured like the rest.
AUTO_ORDER = ("percentile", "entropy", "distribution", "minmax")
TFLITE_METHODS = ("histogram", "minmax")
CALIBRATION_IMAGES = 512  # a classifier's calibration images by default (`mnv2 quantize --num-calibration`)
TFLITE_AUTO_ORDER = TFLITE_METHODS  # as for ONNX: MinMax last
# The global average pool as torch.export writes it (``AdaptiveAvgPool2d(1)`` → ``mean.dim``); see _litert_quantizer
GLOBAL_POOL_OPS = (torch.ops.aten.mean.dim, torch.ops.aten.adaptive_avg_pool2d.default)
# ORT's default 99.999th percentile: clips the rare outliers of ReLU6-free projection outputs, keeps the rest.
PERCENTILE = 99.999


class QuantizationError(Mnv2Error):
    """Quantization could not run on the given model or data, or its output failed a consistency check."""


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
    output_format: str = "onnx"
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
    from mnv2.deploy.engines import LiteRtEngine

    engine = LiteRtEngine(Path(path), threads)
    return np.concatenate([engine(x[i : i + batch]) for i in range(0, len(x), batch)])


class _OnnxBackend:
    """fp32 reference and INT8 candidates as ONNX files run by ONNX Runtime."""

    methods, auto_order, suffix = METHODS, AUTO_ORDER, ".onnx"

    def __init__(self, model: nn.Module, meta: CheckpointMeta | None, workdir: Path, threads: int | None) -> None:
        self.fp32_path, self.threads = workdir / "fp32.onnx", threads
        export_onnx(model, self.fp32_path, ExportOptions(fold_bn=True, dynamic_batch=True), meta=meta)
        self.fp32_session = ort_session(self.fp32_path, threads)

    def fp32(self, x: np.ndarray) -> np.ndarray:
        return predict_onnx(self.fp32_session, x)

    def make(self, method: str, calibration: np.ndarray, path: Path, per_channel: bool) -> None:
        quantize_onnx_static(self.fp32_path, path, calibration, method, per_channel)

    def run(self, path: Path, x: np.ndarray) -> np.ndarray:
        return predict_onnx(ort_session(path, self.threads), x)

    def finish(self, path: Path, out: str | Path, summary: dict) -> None:
        _copy_metadata(self.fp32_path, path, {"quantization": json.dumps(summary), "precision": "int8"})
        data = path.read_bytes()
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))


class _TfliteBackend:
    """fp32 reference: the BN-folded torch model (what the fp32 TFLite export matches to 1e-4); INT8 candidates as
    TFLite files run by LiteRT."""

    methods, auto_order, suffix = TFLITE_METHODS, TFLITE_AUTO_ORDER, ".tflite"

    def __init__(self, model: nn.Module, meta: CheckpointMeta | None, workdir: Path, threads: int | None) -> None:
        from mnv2.deploy.formats import require_package
        from mnv2.deploy.onnx_export import plan_export

        require_package("litert_torch", "litert-torch", "tflite")
        require_package("ai_edge_litert", "ai-edge-litert", "tflite")
        self.options = ExportOptions(dynamic_batch=False)
        plan = plan_export(model, meta, self.options, "tflite")
        self.meta, self.spec, self.model = plan.meta, plan.io, plan.module
        self.threads = threads

    def fp32(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate(
                [self.model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
            )

    def make(self, method: str, calibration: np.ndarray, path: Path, per_channel: bool) -> None:
        quantize_tflite_static(self.model, path, calibration, method, per_channel)

    def run(self, path: Path, x: np.ndarray) -> np.ndarray:
        return predict_tflite(path, x, threads=self.threads)

    def finish(self, path: Path, out: str | Path, summary: dict) -> None:
        from mnv2.deploy.onnx_export import metadata_props

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


def quantize(
    model: nn.Module | str | Path,
    out: str | Path,
    calibration: Iterable,
    held_out: Iterable | None = None,
    method: str = "auto",
    num_calibration: int = CALIBRATION_IMAGES,
    selection_fraction: float = 0.25,
    per_channel: bool = True,
    meta: CheckpointMeta | None = None,
    threads: int | None = None,
    fmt: str | None = None,
) -> QuantizeReport:
    """Quantize a checkpoint (or model) to an INT8 file and report fp32 vs INT8 accuracy.

    Args:
        model: an mnv2 model or a checkpoint path.
        out: the INT8 file to write: ``.onnx`` (QDQ, ONNX Runtime/OpenVINO) or ``.tflite`` (LiteRT).
        calibration: ``(x, labels)`` batches. With ``method="auto"``, a ``selection_fraction`` of it (disjoint
            from the calibration images) picks the method by agreement with fp32 (then top-1).
        held_out: ``(x, labels)`` batches for the final fp32-vs-INT8 report (e.g. the test split). Without it the
            report uses the selection split, and says so.
        method: ``auto`` (measure every method of the format) or one of :data:`METHODS` (ONNX) /
            :data:`TFLITE_METHODS` (TFLite).
        num_calibration: at most this many images calibrate the ranges.
        per_channel: per-output-channel weight scales (per-tensor only to demonstrate the depthwise collapse).
        fmt: ``onnx`` or ``tflite``; default from the suffix of ``out``.
    """
    t0 = time.perf_counter()
    fmt = fmt or Path(out).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"INT8 output {str(out)!r}: name it .onnx or .tflite (formats: {', '.join(FORMATS)})")
    backend_cls = _OnnxBackend if fmt == "onnx" else _TfliteBackend
    if method != "auto" and method not in backend_cls.methods:
        raise ConfigError(
            f"unknown calibration method {method!r} for {fmt}; choose from auto, {', '.join(backend_cls.methods)}"
        )
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
    candidates = list(backend_cls.auto_order) if method == "auto" else [method]
    with tempfile.TemporaryDirectory() as d:
        backend = backend_cls(model, meta, Path(d), threads)
        results: list[MethodResult] = []
        best: tuple[float, float, int] | None = None
        chosen = candidates[0]
        f_sel = backend.fp32(x_sel) if x_sel is not None and len(candidates) > 1 else None
        for i, m in enumerate(candidates):
            path = Path(d) / f"int8-{m}{backend.suffix}"
            backend.make(m, x_cal, path, per_channel)
            if f_sel is None:
                continue
            q = backend.run(path, x_sel)
            r = MethodResult(m, top1(q, y_sel), agreement(q, f_sel))
            results.append(r)
            key = (r.agreement, r.top1, -i)
            if best is None or key > best:
                best, chosen = key, m
        int8_path = Path(d) / f"int8-{chosen}{backend.suffix}"
        if held_out is not None:
            x_ev, y_ev = materialize(held_out)
            split = "held-out data"
        else:
            x_ev, y_ev = x_sel, y_sel
            split = "selection split of the calibration data"
        f = backend.fp32(x_ev)
        q = backend.run(int8_path, x_ev)
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
            output_format=fmt,
        )
        report.seconds = time.perf_counter() - t0
        summary: dict[str, Any] = {k: v for k, v in report.to_dict().items() if k not in ("path",)}
        backend.finish(int8_path, out, summary)
    return report
