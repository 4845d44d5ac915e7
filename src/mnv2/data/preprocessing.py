"""How images are turned into model input. Travels with every checkpoint and set of imported weights."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mnv2.errors import ConfigError
from mnv2.typed import strict_from_dict

# torchvision / timm ImageNet statistics, on pixels scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF-slim "inception" preprocessing and Keras preprocess_input(mode="tf"): x / 127.5 - 1, i.e. [-1, 1].
# On [0, 1] pixels that is (x - 0.5) / 0.5.
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# Input-size limits of the architecture (torch-free: the runtime pads and checks inputs with them).
MIN_INPUT_SIZE = 32  # five stride-2 stages: below 32 px the last feature map would be smaller than 1x1
MAX_INPUT_SIZE = 8192  # a size check before any allocation (a 100000-px input would need terabytes)


# The paper's ImageNet input, 224x224 (§6.1; Table 3), the largest of TF-slim's published resolutions: the default
# size of a classifier, its preprocessing, `mnv2 summary` and `mnv2 bench`.
DEFAULT_INPUT_SIZE = 224


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing: resize the short side to ``input_size / crop_pct``, centre-crop ``input_size``,
    scale to [0, 1], normalise by ``mean`` / ``std`` (per channel, RGB order).

    Attributes:
        input_size: square crop fed to the model.
        crop_pct: crop fraction (torchvision 224/256 = 0.875; 1.0 for no crop).
        interpolation: resize filter.
        mean, std: per-channel normalisation of [0, 1] pixels.
        grayscale: the source images are single-channel (expanded to 3 channels before normalising).
    """

    input_size: int = DEFAULT_INPUT_SIZE
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    grayscale: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or not 1 <= self.input_size <= MAX_INPUT_SIZE:
            raise ConfigError(f"input_size must be an integer in [1, {MAX_INPUT_SIZE}], got {self.input_size!r}")
        if not isinstance(self.crop_pct, (int, float)) or not 0 < self.crop_pct <= 1:  # also refuses nan
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        values = (*self.mean, *self.std)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):  # a NaN mean printed "nan%"
            raise ConfigError(f"mean {self.mean!r} and std {self.std!r} must be finite numbers")
        if len(self.mean) != len(self.std) or not self.mean or any(s <= 0 for s in self.std):
            raise ConfigError(f"mean {self.mean!r} and std {self.std!r} must have equal lengths and std > 0")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def resize_size(self) -> int:
        """Short-side size before the centre crop."""
        return math.floor(self.input_size / self.crop_pct + 1e-6)  # timm: floor(img_size / crop_pct)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "preprocessing") -> Preprocessing:
        """Build from a dict (checkpoint or ONNX metadata); an unknown key raises a ConfigError naming it."""
        return strict_from_dict(cls, values, source)
