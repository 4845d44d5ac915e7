"""The MobileNetV2 family (Table 2) and its task heads. The names below load on first use (PEP 562), so the
torch-free modules here (``sizes``, ``ssdlite_config``) import without torch (the ``runtime`` install)."""

from __future__ import annotations

from mnv2._lazy import lazy_getattr

_EXPORTS = {
    **dict.fromkeys(
        ("TABLE2", "BlockSpec", "FeatureInfo", "InvertedResidual", "MobileNetV2", "MobileNetV2Config",
         "MobileNetV2Features", "block_plan", "feature_taps"),
        "mnv2.models.mobilenetv2",
    ),
    **dict.fromkeys(("ModelInfo", "create_model", "list_models", "mobilenet_v2", "model_info"), "mnv2.models.registry"),
}  # fmt: skip
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("mnv2.models", _EXPORTS, globals())
