"""Hugging Face transformers ``MobileNetV2ForImageClassification`` / ``MobileNetV2Model`` directories → mnv2.

A directory holds ``config.json``, the weights (``model.safetensors`` or ``pytorch_model.bin``) and optionally
``preprocessor_config.json``. Names (``huggingface/transformers`` ``models/mobilenet_v2/modeling_mobilenet_v2.py``):
the stem ``conv_stem.first_conv`` plus the t = 1 block folded into the stem (``conv_stem.conv_3x3``,
``conv_stem.reduce_1x1``), then ``layer.{0..15}.{expand_1x1,conv_3x3,reduce_1x1}`` for the other 16 blocks,
``conv_1x1``, and ``classifier``; each conv is ``.convolution`` + ``.normalization``. The classification model
prefixes the backbone with ``mobilenet_v2.``.

HF quirks and how they are converted (paper.md §6, style.md §4):

* ``tf_padding`` (default True) → ``padding="tf"``: TF "SAME" at every conv, as mnv2's ``ConvNormAct`` does.
* BatchNorm ``momentum=0.997`` is TF-slim's *decay* written as a PyTorch momentum; the imported model uses
  ``tf_decay_to_torch_momentum(0.997)`` = 0.003. Eps is ``layer_norm_eps`` (1e-3).
* ``classifier_dropout_prob=0.8`` (the default) is TF-slim's dropout *keep* probability used as a drop rate; it
  becomes drop 0.2. Any other value is taken as HF means it (a drop probability).
* ``first_layer_is_expansion=False`` adds a 1x1 conv to the t = 1 block that Table 2 does not have; such weights
  are reported as not fitting. ``finegrained_output=False`` with ``depth_multiplier < 1`` scales the last conv
  below 1280, which mnv2 (the paper's §4 rule) does not build: reported too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
from mnv2.models.layers import BN_EPS_TF, BN_MOMENTUM_TF_SLIM
from mnv2.models.mobilenetv2 import BlockSpec
from mnv2.weights.convert.common import (
    Converted,
    ConvertError,
    SourceLayout,
    build_converted,
    imagenet_class_names,
    infer_config,
    load_tensors,
    make_meta,
    remap,
    sha256_file,
    structure,
)

# HF's classifier_dropout_prob default: TF-slim's dropout_keep_prob=0.8 ported as a drop rate; slim drops 0.2.
HF_MISPORTED_KEEP_PROB = 0.8
# MobileNetV2ImageProcessor defaults: resize short side 256 (bilinear), crop 224, IMAGENET_STANDARD mean/std 0.5.
HF_DEFAULT_PREPROCESSING = Preprocessing(224, 224 / 256, "bilinear", TF_MEAN, TF_STD)
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling codes used by HF processors
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
BACKBONE_PREFIX = "mobilenet_v2."


def conv_name(spec: BlockSpec | None, part: str) -> tuple[str, str]:
    if part == "stem":
        p = "conv_stem.first_conv"
    elif part == "head":
        p = "conv_1x1"
    elif not spec.has_expand:  # the t = 1 block lives in HF's stem
        p = {"dw": "conv_stem.conv_3x3", "project": "conv_stem.reduce_1x1"}[part]
    else:
        layer = structure().index(spec) - 1
        p = f"layer.{layer}." + {"expand": "expand_1x1", "dw": "conv_3x3", "project": "reduce_1x1"}[part]
    return f"{p}.convolution.weight", f"{p}.normalization"


LAYOUT = SourceLayout(conv_name=conv_name)


def is_hf_dir(path: Path) -> bool:
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "mobilenet_v2"
    except (OSError, ValueError):
        return False


def _preprocessing(directory: Path, hf: dict[str, Any]) -> Preprocessing:
    file = directory / "preprocessor_config.json"
    if not file.is_file():
        size = hf.get("image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        crop = HF_DEFAULT_PREPROCESSING.crop_pct
        return Preprocessing(**{**HF_DEFAULT_PREPROCESSING.to_dict(), "input_size": int(size), "crop_pct": crop})
    p = json.loads(file.read_text())
    crop = p.get("crop_size") or {"height": 224}
    crop = crop["height"] if isinstance(crop, dict) else int(crop)
    short = (p.get("size") or {}).get("shortest_edge", crop) if p.get("do_resize", True) else crop
    crop_pct = min(1.0, crop / short) if p.get("do_center_crop", True) else 1.0
    scale = p.get("rescale_factor", 1 / 255) if p.get("do_rescale", True) else 1.0
    mean = p.get("image_mean", TF_MEAN) if p.get("do_normalize", True) else (0.0, 0.0, 0.0)
    std = p.get("image_std", TF_STD) if p.get("do_normalize", True) else (1.0, 1.0, 1.0)
    if abs(scale * 255 - 1) > 1e-6:  # mnv2 normalises [0, 1] pixels; fold another rescale into mean/std
        k = scale * 255
        mean, std = [m / k for m in mean], [s / k for s in std]
    return Preprocessing(int(crop), crop_pct, PIL_RESAMPLE.get(p.get("resample", 2), "bilinear"), mean, std)


def convert_huggingface(directory: str | Path) -> Converted:
    """Convert a saved ``MobileNetV2ForImageClassification`` or ``MobileNetV2Model`` directory."""
    directory = Path(directory)
    if not is_hf_dir(directory):
        raise ConvertError(f"{str(directory)!r} is not a Hugging Face MobileNetV2 directory (config.json)")
    hf = json.loads((directory / "config.json").read_text())
    weights = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if weights is None:
        raise ConvertError(f"{str(directory)!r} has no weights file ({' or '.join(WEIGHT_FILES)})")
    if hf.get("hidden_act", "relu6") != "relu6":
        raise ConvertError(f"{directory}: hidden_act={hf['hidden_act']!r}; MobileNetV2 (§4) uses relu6")
    tensors = load_tensors(weights)
    if any(k.startswith(BACKBONE_PREFIX) for k in tensors):  # classification model: strip the backbone prefix
        tensors = {k.removeprefix(BACKBONE_PREFIX): v for k, v in tensors.items()}
    dm = float(hf.get("depth_multiplier", 1.0))
    if not hf.get("first_layer_is_expansion", True):
        raise ConvertError(
            f"{directory}: first_layer_is_expansion=False adds conv_stem.expand_1x1 "
            f"{tuple(tensors['conv_stem.expand_1x1.convolution.weight'].shape)}, a 1x1 expansion in the t=1 block "
            "that Table 2 does not have; mnv2 cannot reproduce it"
        )
    if not hf.get("finegrained_output", True) and dm < 1.0:
        raise ConvertError(
            f"{directory}: finegrained_output=False with depth_multiplier {dm} scales conv_1x1 to "
            f"{tuple(tensors['conv_1x1.convolution.weight'].shape)}; mnv2 keeps 1280 channels below width 1 (§4)"
        )
    drop = float(hf.get("classifier_dropout_prob", HF_MISPORTED_KEEP_PROB))
    dropout = 1.0 - drop if drop == HF_MISPORTED_KEEP_PROB else drop
    remapped = remap(tensors, LAYOUT)
    config = infer_config(
        remapped,
        str(directory),
        width_hint=dm,
        padding="tf" if hf.get("tf_padding", True) else "torch",
        bn_eps=float(hf.get("layer_norm_eps", BN_EPS_TF)),
        bn_momentum=BN_MOMENTUM_TF_SLIM,
        dropout=dropout,
        output_stride=int(hf.get("output_stride", 32)),
        round_nearest=int(hf.get("depth_divisible_by", 8)),
    )
    model = build_converted(remapped, config, str(directory))
    labels = hf.get("id2label") or {}
    names = [labels.get(str(i), "") for i in range(config.num_classes)]
    if not all(names) or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        names = imagenet_class_names(config.num_classes)
    source = {
        "framework": "huggingface",
        "format": "directory",
        "file": directory.name,
        "weights_file": weights.name,
        "sha256": sha256_file(weights),
        "architecture": (hf.get("architectures") or ["MobileNetV2Model"])[0],
        "hf_bn_momentum_as_written": 0.997,
        "hf_classifier_dropout_prob": drop,
        "tf_padding": bool(hf.get("tf_padding", True)),
    }
    return Converted(model, make_meta(config, _preprocessing(directory, hf), source, names))
