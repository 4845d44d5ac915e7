"""Import MobileNetV2 weights from Keras, torchvision, timm and Hugging Face into mnv2 checkpoints.

Example:
    >>> from mnv2.weights.convert import convert
    >>> model = convert("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", out="keras_100_224.safetensors")
    >>> model.meta.preprocessing.mean   # the source's preprocessing travels with the weights
    (0.5, 0.5, 0.5)

The format is detected from the file's content (HDF5 / zip / safetensors / PyTorch pickle and the tensor names),
not from its extension. See each module for the source's naming and the conventions converted.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

from mnv2.models.mobilenetv2 import MobileNetV2
from mnv2.weights.checkpoint import save_checkpoint
from mnv2.weights.convert.common import HDF5_MAGIC, ZIP_MAGIC, Converted, ConvertError, load_tensors, read_magic

FORMATS = ("keras", "torchvision", "timm", "huggingface")


def detect_format(path: str | Path) -> tuple[str, dict | None]:
    """Return ``(format, tensors)``: the source format of ``path`` and, for tensor files, the loaded tensors."""
    from mnv2.weights.convert import huggingface, timm, torchvision

    path = Path(path)
    if path.is_dir():
        if huggingface.is_hf_dir(path):
            return "huggingface", None
        raise ConvertError(f"{str(path)!r} is a directory without a Hugging Face MobileNetV2 config.json")
    if not path.is_file():
        raise ConvertError(f"{str(path)!r} does not exist")
    magic = read_magic(path)
    if magic == HDF5_MAGIC:
        return "keras", None
    if magic[:4] == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as z:
                if "model.weights.h5" in z.namelist():
                    return "keras", None
        except zipfile.BadZipFile as e:
            raise ConvertError(f"{str(path)!r} is truncated or a damaged zip archive ({e})") from e
    tensors = load_tensors(path)
    keys = set(tensors)
    if torchvision.matches(keys):
        return "torchvision", tensors
    if timm.matches(keys):
        return "timm", tensors
    if any(k.endswith("conv_stem.first_conv.convolution.weight") for k in keys):
        raise ConvertError(
            f"{str(path)!r} holds Hugging Face MobileNetV2 weights: convert the directory with its config.json "
            "(it says whether the model uses TF padding)"
        )
    if "stem.conv.weight" in keys:
        raise ConvertError(f"{str(path)!r} already uses mnv2's names; load it with mnv2.load_checkpoint")
    sample = ", ".join(sorted(keys)[:5])
    raise ConvertError(
        f"{str(path)!r}: tensor names match no known MobileNetV2 format ({', '.join(FORMATS)}): {sample}"
    )


def convert_source(source: str | Path, *, format: str | None = None, output: str | None = None) -> Converted:
    """Convert ``source`` (file or Hugging Face directory) into a model plus checkpoint metadata."""
    from mnv2.weights.convert.huggingface import convert_huggingface
    from mnv2.weights.convert.keras import convert_keras
    from mnv2.weights.convert.timm import convert_timm
    from mnv2.weights.convert.torchvision import convert_torchvision

    tensors = None
    if format is None:
        format, tensors = detect_format(source)
    if format not in FORMATS:
        raise ConvertError(f"unknown source format {format!r}; expected one of {', '.join(FORMATS)}")
    if format == "keras":
        converted = convert_keras(source, output=output)
    elif format == "huggingface":
        converted = convert_huggingface(source)
    else:
        fn = convert_torchvision if format == "torchvision" else convert_timm
        converted = fn(source, tensors)
    if output is not None and output != converted.model.config.output:
        config = dataclasses.replace(converted.model.config, output=output)
        converted.model.config = config
        converted.meta.model_config = config
    return converted


def convert(
    source: str | Path, out: str | Path | None = None, *, format: str | None = None, output: str | None = None
) -> MobileNetV2:
    """Convert weights from another framework; return the eval-mode model (``model.meta`` set).

    Args:
        source: a Keras ``.h5``/``.keras`` file, a torchvision or timm ``.pth``/``.safetensors`` state dict, or a
            Hugging Face model directory.
        out: if given, write an mnv2 checkpoint (``.safetensors``) there.
        format: skip detection: one of ``FORMATS``.
        output: ``"logits"`` or ``"softmax"``; default: what the source model outputs.
    """
    converted = convert_source(source, format=format, output=output)
    if out is not None:
        save_checkpoint(out, converted.model, converted.meta)
    return converted.model


__all__ = ["FORMATS", "ConvertError", "Converted", "convert", "convert_source", "detect_format"]
