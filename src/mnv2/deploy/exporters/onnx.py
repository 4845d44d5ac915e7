"""Export a checkpoint to ONNX (and the other formats that install here), verified on every export.

Every export is checked, never trusted: ``onnx.checker`` on the file, then ONNX Runtime's outputs against the
PyTorch model's on random inputs at two batch sizes (max |Δ| ≤ 1e-4 by default). Users' worst export pain is a
file that loads and silently computes something else (../shared/reference/users.md §1.6).

Preprocessing is never lost on the way (§1.3): the checkpoint's :class:`~mnv2.data.preprocessing.Preprocessing`,
class names, architecture and provenance go into the ONNX ``metadata_props``, and ``bake_preprocessing=True``
puts the normalisation into the graph itself: the model then takes uint8 HWC RGB pixels (already resized and
centre-cropped to ``input_size``) and returns probabilities.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnv2.data.preprocessing import Preprocessing
from mnv2.deploy.exporters.formats import FORMATS
from mnv2.deploy.runtime.card import METADATA_PREFIX, read_model_metadata
from mnv2.deploy.runtime.engines import ort_session
from mnv2.errors import ConfigError, Mnv2Error
from mnv2.files import atomic_write
from mnv2.models.fold import fold_batchnorm
from mnv2.models.mobilenetv2 import MobileNetV2, check_resolution
from mnv2.typed import option
from mnv2.weights.checkpoint import CheckpointMeta, load_checkpoint

# ONNX opset the dynamo exporter targets in torch 2.13; ONNX Runtime >= 1.16 and OpenVINO >= 2023.1 read it.
ONNX_OPSET = 20
PARITY_ATOL = 1e-4


class ExportError(Mnv2Error):
    """An export failed its checks (checker, parity) or asked for something the format cannot do."""


@dataclass(frozen=True)
class ExportOptions:
    """What to export.

    Attributes:
        bake_preprocessing: graph input is uint8 NHWC RGB at ``input_size`` (resize/crop stay the caller's job,
            as in every runtime), output is probabilities. Otherwise input is the normalised float NCHW batch and
            output is what the model returns (logits, or probabilities for ``output="softmax"`` models).
        dynamic_batch: the batch dimension is symbolic (``batch``); otherwise fixed at 1.
        dynamic_size: height/width symbolic too. Only for ``padding="torch"``: TF "SAME" padding depends on the
            input size, so a TF-padded model is exported for one size.
        input_size: spatial size to export for: one side, or ``(height, width)`` for a non-square graph (a
            segmenter at its images' size, e.g. CamVid's 360x480; default: the checkpoint's
            ``preprocessing.input_size``).
        fold_bn: fold BatchNorm into the convs before export (the graph has no BN ops).
        parity_atol: largest allowed |onnxruntime − torch| on the parity inputs.
    """

    bake_preprocessing: bool = option(False, "uint8 HWC RGB in, probabilities out")
    dynamic_batch: bool = option(True, "batch fixed at 1 (default: dynamic batch for ONNX; TFLite and ExecuTorch are "
                                 "batch 1)", flag="--static-batch", invert=True)  # fmt: skip
    dynamic_size: bool = option(False, "symbolic height/width (padding='torch' only)")
    input_size: int | tuple[int, int] | None = option(
        None, "N or WIDTHxHEIGHT (a segmenter at its images' size, e.g. 480x360; default: the checkpoint's size)",
        kind="size",
    )  # fmt: skip
    fold_bn: bool = option(True, "keep BatchNorm ops in the graph", flag="--no-fold-bn", invert=True)
    parity_atol: float = PARITY_ATOL

    @classmethod
    def for_format(cls, fmt: str, **given) -> ExportOptions:
        """The options for a ``fmt`` file: ``given`` ones, and a dynamic batch only where the format has one (ONNX;
        TFLite and ExecuTorch graphs are batch 1)."""
        return cls(**{"dynamic_batch": FORMATS[fmt].dynamic_batch if fmt in FORMATS else True, **given})


@dataclass
class ExportReport:
    """What an export produced and how it was verified."""

    path: str
    format: str
    input_name: str
    input_shape: list[Any]
    input_dtype: str
    output_name: str
    output: str
    parity_max_abs: float
    parity_batches: list[int]
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class BakedPreprocessing(nn.Module):
    """uint8 NHWC RGB pixels → (x/255 − mean)/std as one multiply-add → model → probabilities.

    ``(x/255 − mean)/std = x·(1/(255·std)) + (−mean/std)``: the scale and shift are per-channel constants, so the
    graph pays one Mul and one Add. They are not folded into the stem conv because its zero padding happens in
    normalised space (a zero pixel is not a zero input).
    """

    def __init__(self, model: nn.Module, pre: Preprocessing, in_chans: int) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(pre.mean, dtype=torch.float32)
        std = torch.tensor(pre.std, dtype=torch.float32)
        if len(pre.mean) == 1 and in_chans > 1:
            mean, std = mean.expand(in_chans), std.expand(in_chans)
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, -1, 1, 1))
        self.register_buffer("shift", (-mean / std).view(1, -1, 1, 1))
        self.grayscale = pre.grayscale
        self.in_chans = in_chans
        self.input_channels = 1 if pre.grayscale else in_chans
        self.softmax = not model.config.returns_probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        if self.grayscale and self.in_chans > 1:
            x = x.expand(-1, self.in_chans, -1, -1)  # single-channel source, 3-channel model (Preprocessing doc)
        y = self.model(x * self.scale + self.shift)
        return y.softmax(dim=-1) if self.softmax else y


def size_hw(size: int | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of an export size given as one side or as ``(height, width)``."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def check_options(model: nn.Module, meta: CheckpointMeta, options: ExportOptions, fmt: str = "onnx") -> tuple[int, int]:
    """Validate ``options`` for ``model``; return the spatial ``(height, width)`` to export. Raises ``ConfigError``
    naming why."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; mnv2 exports to: {', '.join(FORMATS)}")
    from mnv2.tasks import get_inference, get_task

    any_size = not get_inference(meta.task).fixed_size  # a segmenter: its images' size (``meta.image_size``) if known
    h, w = size_hw(options.input_size or (any_size and meta.image_size) or meta.preprocessing.input_size)
    check_resolution(h)
    check_resolution(w)
    padding = meta.model_config.padding
    if options.dynamic_size and padding == "tf":
        raise ConfigError(
            "dynamic_size is not supported for a model with padding='tf': TF 'SAME' padding depends on the input "
            f"size, so the graph is exported for one size (here {w}x{h}; choose it with input_size)"
        )
    if h != w and not any_size:
        raise ConfigError(f"a non-square export ({w}x{h}) is for segmenters; a {meta.task} model is exported at "
                          "one square size")  # fmt: skip
    if options.bake_preprocessing and not get_task(meta.task).bakes_preprocessing:
        raise ConfigError(f"bake_preprocessing (uint8 input, probabilities out) is for classifiers, not a {meta.task} "
                          "model: drop --bake-preprocessing")  # fmt: skip
    if options.dynamic_size and options.bake_preprocessing:
        raise ConfigError("dynamic_size with bake_preprocessing is not supported: baked input is input_size pixels")
    if not FORMATS[fmt].dynamic_batch and (options.dynamic_size or options.dynamic_batch):
        raise ConfigError(
            f"format {fmt!r} is exported with static shapes (batch 1): pass --static-batch (dynamic_batch=False)"
        )
    if not options.parity_atol > 0:
        raise ConfigError(f"parity_atol must be > 0, got {options.parity_atol!r}")
    return h, w


def prepare_for_export(model: nn.Module, meta: CheckpointMeta, options: ExportOptions) -> nn.Module:
    """The module that is traced: BN folded (optionally), preprocessing baked (optionally), eval mode."""
    model = fold_batchnorm(model) if options.fold_bn else model.eval()
    if options.bake_preprocessing:
        model = BakedPreprocessing(model, meta.preprocessing, meta.model_config.in_chans).eval()
    return model


def io_spec(meta: CheckpointMeta, options: ExportOptions, size: int | tuple[int, int]) -> dict[str, Any]:
    """The exported graph's input/output names, shape, dtype and layout (what runtimes and the metadata state)."""
    cfg = meta.model_config
    h, w = size_hw(size)
    if options.bake_preprocessing:
        c = 1 if meta.preprocessing.grayscale else cfg.in_chans
        return {
            "input_name": "image",
            "input_shape": ["batch" if options.dynamic_batch else 1, h, w, c],
            "input_dtype": "uint8",
            "layout": "NHWC",
            "output_name": "probabilities",
            "output": "probabilities",
        }
    spatial = ("height", "width") if options.dynamic_size else (h, w)
    return {
        "input_name": "input",
        "input_shape": ["batch" if options.dynamic_batch else 1, cfg.in_chans, *spatial],
        "input_dtype": "float32",
        "layout": "NCHW",
        "output_name": cfg.output_kind,
        "output": cfg.output_kind,
    }


@dataclass
class ExportPlan:
    """What every exporter (ONNX, TFLite, ExecuTorch, INT8 TFLite) resolves the same way before converting.

    Attributes:
        meta: the model's metadata (preprocessing, class names, architecture) written with the file.
        size: the spatial ``(height, width)`` the graph is exported for.
        io: input/output spec from :func:`io_spec`.
        reference: the eval-mode module the exported file must match (with preprocessing when it is baked).
        module: the module that is traced: BN folded (optionally), preprocessing baked (optionally), eval mode.
    """

    meta: CheckpointMeta
    size: tuple[int, int]
    io: dict[str, Any]
    reference: nn.Module
    module: nn.Module

    def report(
        self, out: str | Path, fmt: str, parity: float, batches: Sequence[int], t0: float, props: dict[str, str]
    ) -> ExportReport:
        """The :class:`ExportReport` of a verified export of this plan (``t0``: its ``time.perf_counter()`` start)."""
        spec = self.io  # not ``io``: that name is the stdlib module in this file
        return ExportReport(
            path=str(out),
            format=fmt,
            input_name=spec["input_name"],
            input_shape=spec["input_shape"],
            input_dtype=spec["input_dtype"],
            output_name=spec["output_name"],
            output=spec["output"],
            parity_max_abs=parity,
            parity_batches=list(batches),
            seconds=time.perf_counter() - t0,
            metadata=props,
        )


def plan_export(model: nn.Module, meta: CheckpointMeta | None, options: ExportOptions, fmt: str) -> ExportPlan:
    """Validate ``options`` for ``model`` and ``fmt`` and resolve what the exporter needs (raises ``ConfigError``).

    A task with an ``export_module`` (detection: boxes decoded in the graph) is exported through it: the traced
    module, the parity reference and the output's name all come from the task."""
    from mnv2.tasks import get_task

    if meta is None:
        meta = getattr(model, "meta", None)
    if meta is None:
        if not isinstance(model, MobileNetV2):
            raise ConfigError("exporting a module that is not an mnv2 MobileNetV2 needs its CheckpointMeta")
        meta = CheckpointMeta(model_config=model.config)
    size = check_options(model, meta, options, fmt)
    wrap = get_task(meta.task).export_module
    if wrap is None:
        reference = (
            BakedPreprocessing(model, meta.preprocessing, meta.model_config.in_chans)
            if options.bake_preprocessing
            else model
        ).eval()
        return ExportPlan(meta, size, io_spec(meta, options, size), reference, prepare_for_export(model, meta, options))
    if options.dynamic_size:
        raise ConfigError(f"a {meta.task} model is exported for one input size: drop --dynamic-size")
    reference, output = wrap(model.eval(), size)
    module, _ = wrap(fold_batchnorm(model) if options.fold_bn else model.eval(), size)
    spec = {**io_spec(meta, options, size), "output_name": output, "output": output}
    return ExportPlan(meta, size, spec, reference, module)


def sample_input(
    io: dict[str, Any], batch: int, size: int | tuple[int, int] | None = None, seed: int = 0
) -> torch.Tensor:
    """A random input matching the export's input spec (uint8 pixels or a normal float batch); ``size`` (one side
    or ``(height, width)``) fills a symbolic height and width."""
    g = torch.Generator().manual_seed(seed)
    fill = dict(zip(("height", "width"), size_hw(size))) if size is not None else {}
    shape = [batch if d == "batch" else fill.get(d, d) if isinstance(d, str) else d for d in io["input_shape"]]
    if io["input_dtype"] == "uint8":
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    return torch.randn(shape, generator=g)


def metadata_props(meta: CheckpointMeta, io: dict[str, Any], options: ExportOptions, extra: dict | None = None):
    """The ``mnv2.*`` key/value pairs written into an exported model."""
    from mnv2._version import __version__
    from mnv2.deploy.runtime.card import training_tile
    from mnv2.tasks import get_inference

    pre = meta.preprocessing
    shape = io["input_shape"]
    side = shape[1] if io["layout"] == "NHWC" else shape[2]
    if get_inference(meta.task).fixed_size and isinstance(side, int) and side != pre.input_size:
        # the card describes the file: a detector exported at 300 px takes 300 px images (issue 28, 4)
        pre = dataclasses.replace(pre, input_size=side)
    props = {
        "preprocessing": json.dumps(pre.to_dict()),
        "class_names": json.dumps(meta.class_names),
        "model_config": json.dumps(meta.model_config.to_dict()),
        "source": json.dumps(meta.source),
        "input": json.dumps({k: io[k] for k in ("input_name", "input_shape", "input_dtype", "layout")}),
        "output": io["output"],
        "baked_preprocessing": json.dumps(options.bake_preprocessing),
        "bn_folded": json.dumps(options.fold_bn),
        "version": __version__,
        "task": meta.task,
    }
    if meta.head is not None:  # a task head's arguments (detection anchors and NMS, segmentation classes' colours)
        props["head"] = json.dumps(meta.head)
    if meta.metrics:
        props["metrics"] = json.dumps(meta.metrics)
    if (tile := training_tile(meta.config)) is not None:  # the exported file predicts on tiles as its checkpoint does
        props["tile"] = json.dumps(tile)
    props.update(extra or {})
    return {METADATA_PREFIX + k: v for k, v in props.items()}


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx's dynamo exporter prints progress lines and warnings; keep the CLI's output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def to_onnx_model(module: nn.Module, example: torch.Tensor, io: dict[str, Any], options: ExportOptions):
    """Trace ``module`` with torch's dynamo ONNX exporter; returns an ``onnx.ModelProto``."""
    dims: dict[int, Any] = {}
    if options.dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if options.dynamic_size:
        # torch padding keeps every conv size-agnostic; H, W >= 32 (five stride-2 stages).
        dims[2] = torch.export.Dim("height", min=32, max=4096)
        dims[3] = torch.export.Dim("width", min=32, max=4096)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                (example,),
                None,
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=[io["input_name"]],
                output_names=[io["output_name"]],
                dynamic_shapes=({**dims},) if dims else None,
                external_data=False,
                optimize=True,
            )
    except Exception as e:  # the exporter raises many types; report them as a failed export
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    return program.model_proto


def check_parity(
    reference: nn.Module,
    run,
    io: dict[str, Any],
    batches: tuple[int, ...],
    size: int | tuple[int, int],
    atol: float,
    what: str,
) -> float:
    """Compare ``run(np_input)`` with ``reference(input)`` on random inputs; raise ExportError beyond ``atol``."""
    worst = 0.0
    for i, b in enumerate(batches):
        x = sample_input(io, b, size, seed=i)
        with torch.inference_mode():
            want = reference(x).float().numpy()
        got = np.asarray(run(x.numpy()))
        if got.shape != want.shape:
            raise ExportError(f"{what} output shape {got.shape} != torch {want.shape} at batch {b}")
        diff = float(np.max(np.abs(got.astype(np.float64) - want)))
        worst = max(worst, diff)
        if not diff <= atol:
            raise ExportError(f"{what} differs from torch by {diff:.3g} (> {atol:g}) at batch {b}: export is wrong")
    return worst


def export_onnx(
    model: nn.Module | str | Path,
    out: str | Path,
    options: ExportOptions | None = None,
    meta: CheckpointMeta | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export a model (or a checkpoint path) to ONNX at ``out``; check it and verify parity with ONNX Runtime.

    Returns an :class:`ExportReport`; raises :class:`ExportError` if the checker or the parity check fails (the
    file is then not written) and ``ConfigError`` for unsupported options.
    """
    import onnx

    t0 = time.perf_counter()
    options = options or ExportOptions()
    if isinstance(model, (str, Path)):
        model = load_checkpoint(model)
    plan = plan_export(model, meta, options, "onnx")
    size, spec, reference = plan.size, plan.io, plan.reference
    proto = to_onnx_model(plan.module, sample_input(spec, 2, size), spec, options)
    props = metadata_props(plan.meta, spec, options, extra_metadata)
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "mnv2"
    proto.doc_string = "MobileNetV2 (arXiv:1801.04381) exported by mnv2; see metadata_props mnv2.*"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected the exported graph: {e}") from e
    data = proto.SerializeToString()
    session = ort_session(data)
    name = spec["input_name"]
    batches = (1, 3) if options.dynamic_batch else (1,)
    worst = check_parity(
        reference, lambda x: session.run(None, {name: x})[0], spec, batches, size, options.parity_atol, "onnx"
    )
    if options.dynamic_size:  # also at a size other than the traced one
        worst = max(
            worst,
            check_parity(
                reference,
                lambda x: session.run(None, {name: x})[0],
                spec,
                (2,),
                (size[0] + 32, size[1] + 32),
                options.parity_atol,
                "onnx (other input size)",
            ),
        )
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return plan.report(out, "onnx", worst, batches, t0, props)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``mnv2.*`` metadata of an exported ONNX file, JSON values decoded (``preprocessing`` as the dataclass)."""
    if Path(path).suffix != ".onnx":
        raise ConfigError(f"{str(path)!r} is not an .onnx file")
    return read_model_metadata(path)
