"""Model registry: one keyword-only builder per published width, and ``create_model`` / ``list_models``.

The published widths and the resolutions with TF-slim checkpoints are those of the TF-slim README table
(tensorflow/models research/slim/nets/mobilenet/README.md; ../shared/reference/paper.md §5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from mnv2.data.preprocessing import DEFAULT_INPUT_SIZE
from mnv2.errors import ConfigError
from mnv2.models.mobilenetv2 import MobileNetV2, MobileNetV2Config, MobileNetV2Features

PUBLISHED_RESOLUTIONS = (96, 128, 160, 192, DEFAULT_INPUT_SIZE)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model name."""

    name: str
    width_mult: float
    default_resolution: int
    resolutions: tuple[int, ...]  # resolutions with published ImageNet checkpoints (TF-slim)
    paper: str = "arXiv:1801.04381"


_REGISTRY: dict[str, tuple[ModelInfo, Callable[..., nn.Module]]] = {}


def mobilenet_v2(
    *, features_only: bool = False, out_indices: tuple[int, ...] | None = None, **kwargs
) -> MobileNetV2 | MobileNetV2Features:
    """Build a MobileNetV2 from :class:`MobileNetV2Config` arguments (``width_mult``, ``num_classes``, ...).

    With ``features_only=True`` returns a :class:`MobileNetV2Features` that yields the maps ``out_indices``
    selects from ``feature_info``.
    """
    config = MobileNetV2Config.from_dict(kwargs, "model arguments")
    if features_only:
        return MobileNetV2Features(config, out_indices)
    if out_indices is not None:
        raise ConfigError("out_indices is only meaningful with features_only=True")
    return MobileNetV2(config)


def register_model(width_mult: float, resolutions: tuple[int, ...] = PUBLISHED_RESOLUTIONS):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        info = ModelInfo(fn.__name__, width_mult, max(resolutions), tuple(resolutions))
        _REGISTRY[fn.__name__] = (info, fn)
        return fn

    return wrap


@register_model(0.35)
def mobilenetv2_035(**kwargs) -> nn.Module:
    """MobileNetV2 0.35 (TF-slim: 59M MACs, 1.66M params at 224)."""
    return mobilenet_v2(width_mult=0.35, **kwargs)


@register_model(0.5)
def mobilenetv2_050(**kwargs) -> nn.Module:
    """MobileNetV2 0.5 (TF-slim: 97M MACs, 1.95M params at 224)."""
    return mobilenet_v2(width_mult=0.5, **kwargs)


@register_model(0.75)
def mobilenetv2_075(**kwargs) -> nn.Module:
    """MobileNetV2 0.75 (TF-slim: 209M MACs, 2.61M params at 224)."""
    return mobilenet_v2(width_mult=0.75, **kwargs)


@register_model(1.0)
def mobilenetv2_100(**kwargs) -> nn.Module:
    """MobileNetV2 1.0, Table 2 as published (300M MACs, 3.47M params at 224)."""
    return mobilenet_v2(width_mult=1.0, **kwargs)


@register_model(1.3, resolutions=(224,))
def mobilenetv2_130(**kwargs) -> nn.Module:
    """MobileNetV2 1.3 (TF-slim: 509M MACs, 5.34M params at 224)."""
    return mobilenet_v2(width_mult=1.3, **kwargs)


@register_model(1.4, resolutions=(224,))
def mobilenetv2_140(**kwargs) -> nn.Module:
    """MobileNetV2 1.4 (TF-slim: 582M MACs, 6.06M params at 224)."""
    return mobilenet_v2(width_mult=1.4, **kwargs)


def list_models() -> list[str]:
    """Registered model names, narrowest first."""
    return sorted(_REGISTRY, key=lambda n: _REGISTRY[n][0].width_mult)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered name."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model name {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name][0]


def create_model(name: str, *, num_classes: int | None = None, **overrides) -> nn.Module:
    """Create a registered model by name.

    ``None``-valued overrides are dropped, so CLI defaults never override model defaults (as timm).

    Example:
        >>> import mnv2
        >>> model = mnv2.create_model("mobilenetv2_100", num_classes=10)
        >>> backbone = mnv2.create_model("mobilenetv2_100", features_only=True, output_stride=16)
    """
    info = model_info(name)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if "width_mult" in kwargs and kwargs["width_mult"] != info.width_mult:
        raise ConfigError(f"{name} has width {info.width_mult}; use mnv2.mobilenet_v2(width_mult=...) for others")
    kwargs.pop("width_mult", None)
    return _REGISTRY[name][1](**kwargs)
