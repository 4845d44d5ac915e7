"""torchvision ``mobilenet_v2`` state dicts (``.pth``) → mnv2.

torchvision (pytorch/vision ``torchvision/models/mobilenetv2.py``) numbers its modules positionally:
``features.0`` is the stem ``Conv2dNormActivation``, ``features.{1..17}`` the bottlenecks (``conv.{0,1,2,3}``: the
expansion ``Conv2dNormActivation`` is absent when t = 1, which shifts the others), ``features.18`` the last 1x1
conv, ``classifier.1`` the Linear. PyTorch layouts, BN eps 1e-5, symmetric padding: tensors copy as they are.
"""

from __future__ import annotations

from pathlib import Path

from mnv2.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mnv2.models.mobilenetv2 import BlockSpec
from mnv2.weights.convert.common import Converted, SourceLayout, convert_torch_state_dict, structure

# torchvision's eval transform for IMAGENET1K_V1: resize 256 -> crop 224, bilinear (TV-doc; paper.md §6).
TORCHVISION_PREPROCESSING = Preprocessing(224, 224 / 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
FINGERPRINT = "features.0.0.weight"


def _flat_index(spec: BlockSpec) -> int:
    return structure().index(spec)  # position in Table 2's block list; features.{1 + it}


def conv_name(spec: BlockSpec | None, part: str) -> tuple[str, str]:
    if part == "stem":
        return "features.0.0.weight", "features.0.1"
    if part == "head":
        return f"features.{len(structure()) + 1}.0.weight", f"features.{len(structure()) + 1}.1"
    p = f"features.{_flat_index(spec) + 1}.conv"
    # Sequential positions inside InvertedResidual.conv: [expand CNA]? dw CNA, project Conv2d, project BN.
    first = 1 if spec.has_expand else 0
    if part == "expand":
        return f"{p}.0.0.weight", f"{p}.0.1"
    if part == "dw":
        return f"{p}.{first}.0.weight", f"{p}.{first}.1"
    return f"{p}.{first + 1}.weight", f"{p}.{first + 2}"


LAYOUT = SourceLayout(conv_name=conv_name, classifier=("classifier.1.weight", "classifier.1.bias"))


def matches(keys) -> bool:
    return FINGERPRINT in keys and any(k.startswith("features.1.conv.") for k in keys)


def convert_torchvision(path: str | Path, tensors=None, *, preprocessing: Preprocessing | None = None) -> Converted:
    """Convert a torchvision ``mobilenet_v2`` state dict file (any width, any class count)."""
    return convert_torch_state_dict(path, tensors, LAYOUT, "torchvision", preprocessing or TORCHVISION_PREPROCESSING)
