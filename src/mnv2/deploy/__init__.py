"""Deployment: export to ONNX, TFLite and ExecuTorch with parity checks, INT8 quantization, inference engines, the
predict driver and §5.1 memory-efficient inference.

Downstream of the checkpoint (files → data → model → task → engine → checkpoint → deploy): nothing here imports the
training engine, and nothing below imports this. The names below load on first use (PEP 562): the modules that run
exported files (``card``, ``engines``, ``predict``) import no torch, so they work in the ``runtime`` install.
"""

from __future__ import annotations

from mnv2._lazy import lazy_getattr

_EXPORTS = {
    "export": "mnv2.deploy.exporters",
    **dict.fromkeys(
        ("ExportError", "ExportOptions", "ExportPlan", "ExportReport", "export_onnx", "plan_export",
         "read_onnx_metadata"),
        "mnv2.deploy.exporters.onnx",
    ),
    "fold_batchnorm": "mnv2.models.fold",
    "read_card": "mnv2.deploy.runtime.card",
    "load_engine": "mnv2.deploy.runtime.engines",
    "predict": "mnv2.deploy.runtime.predict",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("mnv2.deploy", _EXPORTS, globals())
