"""The MobileNetV2 family (Table 2) and its task heads. The names below load on first use (PEP 562), so the
torch-free modules here (``sizes``, ``ssdlite_config``) import without torch (the ``runtime`` install)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    **dict.fromkeys(
        ("TABLE2", "BlockSpec", "FeatureInfo", "InvertedResidual", "MobileNetV2", "MobileNetV2Config",
         "MobileNetV2Features", "block_plan", "feature_taps"),
        "mnv2.models.mobilenetv2",
    ),
    **dict.fromkeys(("ModelInfo", "create_model", "list_models", "mobilenet_v2", "model_info"), "mnv2.models.registry"),
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mnv2.models' has no attribute {name!r}")
