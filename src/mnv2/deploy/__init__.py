"""Deployment: export to ONNX, TFLite and ExecuTorch with parity checks, INT8 quantization, inference engines and
§5.1 memory-efficient inference.

Downstream of the checkpoint (files → data → model → task → engine → checkpoint → deploy): nothing here imports the
training engine, and nothing below imports this.
"""

from mnv2.deploy.export import export
from mnv2.deploy.onnx_export import (
    ExportError,
    ExportOptions,
    ExportPlan,
    ExportReport,
    export_onnx,
    plan_export,
    read_onnx_metadata,
)
from mnv2.models.fold import fold_batchnorm

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
