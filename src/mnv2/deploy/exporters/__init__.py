"""Export: one entry point over the formats (:mod:`.formats` holds their facts), ONNX in :mod:`.onnx`, TFLite and
ExecuTorch in :mod:`.edge`; every file is checked for parity against torch before it is written.

The entry point sits above both format modules so that neither imports the other's dispatcher (there was a cycle).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mnv2.deploy.exporters import edge
from mnv2.deploy.exporters.formats import FORMATS
from mnv2.deploy.exporters.onnx import ExportOptions, ExportReport, export_onnx
from mnv2.errors import ConfigError
from mnv2.files import sha256_file
from mnv2.weights.checkpoint import load_checkpoint


def export(
    checkpoint: str | Path | nn.Module,
    out: str | Path,
    fmt: str = "onnx",
    options: ExportOptions | None = None,
) -> ExportReport:
    """Export to ``fmt`` (``onnx``, ``tflite``, ``executorch``), verifying parity. See :data:`FORMATS`."""
    options = options or ExportOptions()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; mnv2 exports to: {', '.join(FORMATS)}")
    extra = {}
    if isinstance(checkpoint, (str, Path)):
        path, checkpoint = checkpoint, load_checkpoint(checkpoint)
        extra["checkpoint_sha256"] = sha256_file(path)
    if fmt == "onnx":
        return export_onnx(checkpoint, out, options, extra_metadata=extra)
    return edge.export_other(fmt, checkpoint, out, options)
