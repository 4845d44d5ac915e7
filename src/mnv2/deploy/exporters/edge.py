"""Export formats other than ONNX, each verified against torch like the ONNX export.

- ``tflite``: LiteRT (TFLite) flatbuffer via ``litert-torch`` (the renamed ai-edge-torch), run by the
  ``ai-edge-litert`` interpreter (XNNPACK) for the parity check. Static shapes, batch 1, NCHW float input as
  torch (or uint8 NHWC with ``bake_preprocessing``).
- ``executorch``: ``.pte`` program lowered to the XNNPACK backend, run by ExecuTorch's Python runtime.

Both packages install alongside torch 2.13 here (extra ``formats``). Their native converters have crashed (segfault) a
long-lived Python process that ran both one after the other; ``mnv2 export`` runs one per process, and so should
scripts that export both formats (the tests do). Core ML is not offered: coremltools converts on
Linux but only runs models on macOS, so the parity check cannot run (see README, Deployment).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from torch import nn

from mnv2.deploy.exporters.onnx import (
    ExportOptions,
    ExportReport,
    check_parity,
    metadata_props,
    plan_export,
    sample_input,
)
from mnv2.errors import ConfigError
from mnv2.files import atomic_write
from mnv2.weights.checkpoint import CheckpointMeta


def require_package(module: str, package: str, fmt: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"format {fmt!r} needs the {package!r} package: pip install 'mnv2[formats]'")


@contextlib.contextmanager
def _quiet():
    """The converters print progress to stdout and C++ logs to stderr; keep the CLI readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _tflite(module: nn.Module, example, out: Path) -> tuple[bytes, object]:
    require_package("litert_torch", "litert-torch", "tflite")
    require_package("ai_edge_litert", "ai-edge-litert", "tflite")
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        edge = litert_torch.convert(module, (example,))
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d) / "model.tflite"
            edge.export(str(tmp))
            data = tmp.read_bytes()
    interp = Interpreter(model_content=data, num_threads=2)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(outp).copy()

    return data, run


def _executorch(module: nn.Module, example, out: Path) -> tuple[bytes, object]:
    require_package("executorch", "executorch", "executorch")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    with _quiet():
        program = torch.export.export(module, (example,))
        data = bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "model.pte"
        tmp.write_bytes(data)
        method = Runtime.get().load_program(str(tmp)).load_method("forward")

    def run(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(x)])[0].numpy()

    return data, run


CONVERTERS = {"tflite": _tflite, "executorch": _executorch}


def export_other(
    fmt: str, model: nn.Module, out: str | Path, options: ExportOptions, meta: CheckpointMeta | None = None
) -> ExportReport:
    """Export ``model`` to ``fmt`` (``tflite`` or ``executorch``) at batch 1, verify parity, write ``out``.

    The model's metadata (preprocessing, class names, ...) is written beside it as ``<out>.json``: neither format
    has a free-form metadata table that their converters here fill.
    """
    import json

    t0 = time.perf_counter()
    plan = plan_export(model, meta, options, fmt)
    size, spec = plan.size, plan.io
    data, run = CONVERTERS[fmt](plan.module, sample_input(spec, 1, size), Path(out))
    worst = check_parity(plan.reference, run, spec, (1,), size, options.parity_atol, fmt)
    props = metadata_props(plan.meta, spec, options)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    sidecar = Path(str(out) + ".json")
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(props, indent=1)))
    return plan.report(out, fmt, worst, (1,), t0, props)
