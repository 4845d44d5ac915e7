"""Deployment: ONNX (and other format) export with parity checks, INT8 quantization, inference engines, benchmarks.

Downstream of the model and the checkpoint (files → data → model → engine → checkpoint → export/inference):
nothing here is imported by the model, data or training code.
"""

from mnv2.export.fold import fold_batchnorm
from mnv2.export.onnx_export import (
    ExportError,
    ExportOptions,
    ExportPlan,
    ExportReport,
    export,
    export_onnx,
    plan_export,
    read_onnx_metadata,
)

__all__ = [
    "ExportError",
    "ExportOptions",
    "ExportPlan",
    "ExportReport",
    "export",
    "export_onnx",
    "fold_batchnorm",
    "plan_export",
    "read_onnx_metadata",
]
