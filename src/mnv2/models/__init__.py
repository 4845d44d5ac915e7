from mnv2.models.mobilenetv2 import (
    TABLE2,
    BlockSpec,
    FeatureInfo,
    InvertedResidual,
    MobileNetV2,
    MobileNetV2Config,
    MobileNetV2Features,
    block_plan,
    feature_taps,
)
from mnv2.models.registry import ModelInfo, create_model, list_models, mobilenet_v2, model_info

__all__ = [
    "TABLE2",
    "BlockSpec",
    "FeatureInfo",
    "InvertedResidual",
    "MobileNetV2",
    "MobileNetV2Config",
    "MobileNetV2Features",
    "ModelInfo",
    "block_plan",
    "create_model",
    "feature_taps",
    "list_models",
    "mobilenet_v2",
    "model_info",
]
