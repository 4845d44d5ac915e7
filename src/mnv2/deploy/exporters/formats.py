"""The export formats mnv2 writes and their facts, once: what each needs installed, its file suffix, and whether its
graphs may have a symbolic batch (TFLite and ExecuTorch graphs are batch 1: their interpreters resize at run time).

Core ML is absent on purpose: coremltools converts on Linux, but its runtime (prediction) is macOS-only, so the
parity check every export must pass cannot run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    needs: str
    dynamic_batch: bool  # whether a graph of this format may take any batch size


FORMATS = {
    f.name: f
    for f in (
        Format("onnx", ".onnx", "onnx + onnxruntime (+ onnxscript, torch's exporter)", True),
        Format("tflite", ".tflite", "litert-torch (converter) + ai-edge-litert (interpreter)", False),
        Format("executorch", ".pte", "executorch (XNNPACK backend)", False),
    )
}


def format_for(path: str | Path) -> str:
    """The export format an output file's suffix names (``onnx`` for any other)."""
    suffix = Path(path).suffix.lower()
    return next((f.name for f in FORMATS.values() if f.suffix == suffix), "onnx")
