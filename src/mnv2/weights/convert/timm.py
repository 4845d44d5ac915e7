"""timm ``mobilenetv2_*`` state dicts (``.pth`` / ``.safetensors``) → mnv2.

timm (huggingface/pytorch-image-models ``timm/models/efficientnet.py``, ``_gen_mobilenet_v2``) builds the same
seven stages as Table 2: ``blocks.{stage}.{i}`` matches mnv2's ``blocks.{stage}.{i}``. The t = 1 block is a
``DepthwiseSeparableConv`` (``conv_dw``/``bn1``, ``conv_pw``/``bn2``), the others ``InvertedResidual``
(``conv_pw``/``bn1`` expand, ``conv_dw``/``bn2``, ``conv_pwl``/``bn3``); ``conv_stem``/``bn1``, ``conv_head``/``bn2``
and ``classifier`` around them. PyTorch layouts and BN defaults, symmetric padding. The depth-multiplied variants
(``mobilenetv2_110d``, ``_120d``) have more blocks than Table 2 and are reported as not fitting.
"""

from __future__ import annotations

from pathlib import Path

from mnv2.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mnv2.models.mobilenetv2 import BlockSpec
from mnv2.weights.convert.common import Converted, SourceLayout, convert_torch_state_dict

# timm's pretrained_cfg for mobilenetv2_*: 224 px, crop_pct 0.875, bicubic, ImageNet mean/std (paper.md §6).
TIMM_PREPROCESSING = Preprocessing(224, 0.875, "bicubic", IMAGENET_MEAN, IMAGENET_STD)


def conv_name(spec: BlockSpec | None, part: str) -> tuple[str, str]:
    if part == "stem":
        return "conv_stem.weight", "bn1"
    if part == "head":
        return "conv_head.weight", "bn2"
    p = f"blocks.{spec.stage}.{spec.index}"
    if not spec.has_expand:  # DepthwiseSeparableConv
        return {"dw": (f"{p}.conv_dw.weight", f"{p}.bn1"), "project": (f"{p}.conv_pw.weight", f"{p}.bn2")}[part]
    return {
        "expand": (f"{p}.conv_pw.weight", f"{p}.bn1"),
        "dw": (f"{p}.conv_dw.weight", f"{p}.bn2"),
        "project": (f"{p}.conv_pwl.weight", f"{p}.bn3"),
    }[part]


LAYOUT = SourceLayout(conv_name=conv_name)


def matches(keys) -> bool:
    return "conv_stem.weight" in keys and "conv_head.weight" in keys


def convert_timm(path: str | Path, tensors=None, *, preprocessing: Preprocessing | None = None) -> Converted:
    """Convert a timm ``mobilenetv2_*`` state dict (``.pth`` or ``.safetensors``; any width and class count)."""
    return convert_torch_state_dict(path, tensors, LAYOUT, "timm", preprocessing or TIMM_PREPROCESSING)
