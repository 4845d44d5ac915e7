"""mnv2: MobileNetV2 (Sandler et al., CVPR 2018, arXiv:1801.04381) as practical software.

The names below are loaded on first use (PEP 562), so ``import mnv2.deploy.runtime.engines`` or ``mnv2 --help`` does not
pull in the training engine, the converters or torch's distributed package.
"""

from __future__ import annotations

from mnv2._lazy import lazy_getattr
from mnv2._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "CheckpointError": "mnv2.weights.checkpoint",
    "CheckpointMeta": "mnv2.weights.checkpoint",
    "load_checkpoint": "mnv2.weights.checkpoint",
    "save_checkpoint": "mnv2.weights.checkpoint",
    "Preprocessing": "mnv2.data.preprocessing",
    "ConfigError": "mnv2.errors",
    "Mnv2Error": "mnv2.errors",
    "create_model": "mnv2.weights.hub",
    "list_pretrained": "mnv2.weights.hub",
    "StreamingMobileNetV2": "mnv2.models.streaming",
    "streaming": "mnv2.models.streaming",
    "FeatureInfo": "mnv2.models",
    "MobileNetV2": "mnv2.models",
    "MobileNetV2Config": "mnv2.models",
    "MobileNetV2Features": "mnv2.models",
    "list_models": "mnv2.models",
    "mobilenet_v2": "mnv2.models",
    "model_info": "mnv2.models",
    "TASKS": "mnv2.tasks",
    "Predictor": "mnv2.deploy.runtime.predict",
    "predict": "mnv2.deploy.runtime.predict",
    "get_task": "mnv2.tasks",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


__getattr__ = lazy_getattr("mnv2", _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
