"""mnv2: MobileNetV2 (Sandler et al., CVPR 2018, arXiv:1801.04381) as practical software."""

from mnv2.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from mnv2.data.preprocessing import Preprocessing
from mnv2.errors import ConfigError, Mnv2Error
from mnv2.hub import create_model, list_pretrained
from mnv2.memory_efficient import StreamingMobileNetV2, streaming
from mnv2.models import (
    FeatureInfo,
    MobileNetV2,
    MobileNetV2Config,
    MobileNetV2Features,
    list_models,
    mobilenet_v2,
    model_info,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointMeta",
    "ConfigError",
    "FeatureInfo",
    "Mnv2Error",
    "MobileNetV2",
    "MobileNetV2Config",
    "MobileNetV2Features",
    "Preprocessing",
    "StreamingMobileNetV2",
    "__version__",
    "create_model",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "mobilenet_v2",
    "model_info",
    "save_checkpoint",
    "streaming",
]
