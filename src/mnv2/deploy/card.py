"""A model file's card: what the inference half of its task needs to know (task, classes, preprocessing, output
kind, head arguments, fixed input size), read from any model file mnv2 writes, without torch for exported files.

- ``.onnx``: the ``mnv2.*`` entries of the graph's ``metadata_props``, read straight from the protobuf wire format
  (field 14 of ``ModelProto``): no ``onnx`` package, and the weights are skipped over, never parsed.
- ``.tflite``: ``<file>.tflite.json`` beside it (TFLite converters fill no free-form metadata table).
- ``.safetensors``: the checkpoint's own metadata (``mnv2.weights.checkpoint``; needs torch, as running it does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnv2.data.preprocessing import Preprocessing
from mnv2.errors import ConfigError

METADATA_PREFIX = "mnv2."
EXPORTED_SUFFIXES = (".onnx", ".tflite")
DEFAULT_TASK = "classification"  # files exported before tasks existed are classifiers
_METADATA_PROPS = 14  # onnx.proto: ModelProto.metadata_props (repeated StringStringEntryProto {1: key, 2: value})


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """``(field number, wire type, value)`` of one protobuf message's top-level fields (bytes for length-delimited)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def onnx_metadata_props(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file (key → value); ``ConfigError`` for a file that is not ONNX."""
    data = memoryview(Path(path).read_bytes())
    props = {}
    try:
        for number, wire, value in _fields(data):
            if number == _METADATA_PROPS and wire == 2:
                entry = {n: bytes(v).decode() for n, w, v in _fields(value) if w == 2}
                props[entry.get(1, "")] = entry.get(2, "")
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(path)!r} is not a readable ONNX file ({e})") from e
    return props


def decode_metadata(pairs: dict[str, str]) -> dict[str, Any]:
    """The ``mnv2.*`` entries, prefix dropped, JSON values decoded (``preprocessing`` as the dataclass)."""
    out: dict[str, Any] = {}
    for k, v in pairs.items():
        if not k.startswith(METADATA_PREFIX):
            continue
        key = k[len(METADATA_PREFIX) :]
        try:
            out[key] = json.loads(v)
        except json.JSONDecodeError:
            out[key] = v
    if "preprocessing" in out:
        out["preprocessing"] = Preprocessing.from_dict(out["preprocessing"])
    return out


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The ``mnv2.*`` metadata of an exported file: in the graph for ONNX, in ``<file>.json`` for TFLite/ExecuTorch.
    Empty when a non-ONNX file has no such sidecar."""
    path = Path(path)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"ONNX file {str(path)!r} does not exist")
        return decode_metadata(onnx_metadata_props(path))
    sidecar = Path(str(path) + ".json")
    if not sidecar.is_file():
        return {}
    try:
        pairs = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(sidecar)!r} is not mnv2 metadata JSON ({e})") from e
    if not isinstance(pairs, dict):
        raise ConfigError(f"{str(sidecar)!r} is not mnv2 metadata JSON (not an object)")
    return decode_metadata(pairs)


def fixed_input_hw(file_meta: dict) -> tuple[int, int] | None:
    """An exported NCHW graph's fixed ``(height, width)`` from its metadata; None when symbolic or unknown."""
    shape = (file_meta.get("input") or {}).get("input_shape") or []
    if len(shape) == 4 and file_meta["input"].get("layout", "NCHW") == "NCHW":
        h, w = shape[2:]
        if isinstance(h, int) and isinstance(w, int):
            return h, w
    return None


def exported_card(path: str | Path) -> tuple[str, dict]:
    """``(task name, info)`` of an exported ``.onnx``/``.tflite`` file from its own metadata (no torch)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {str(path)!r} does not exist")
    meta = read_model_metadata(path)
    if "preprocessing" not in meta:
        raise ConfigError(f"{str(path)!r} has no mnv2 metadata (preprocessing, class names); export it with mnv2")
    if meta.get("baked_preprocessing"):
        raise ConfigError(
            f"{str(path)!r} has preprocessing baked in (uint8 HWC input); predict with its checkpoint or a plain "
            "export, or feed it decoded images yourself"
        )
    names = meta.get("class_names")
    info = {
        "preprocessing": meta["preprocessing"],
        "class_names": int(meta["model_config"]["num_classes"]) if names is None else names,
        "output": meta.get("output", "logits"),
        "head": meta.get("head"),
        "input_hw": fixed_input_hw(meta),
    }
    return meta.get("task", DEFAULT_TASK), info


def checkpoint_info(meta) -> dict:
    """What a task's inference half needs of a checkpoint (its ``CheckpointMeta``): preprocessing, class names (or
    their count), output kind and head arguments."""
    return {
        "preprocessing": meta.preprocessing,
        "class_names": meta.class_names or meta.model_config.num_classes,
        "output": meta.model_config.output_kind,
        "head": meta.head,
    }


def read_card(path: str | Path) -> tuple[str, dict]:
    """``(task name, info)`` of any model file: exported files torch-free, checkpoints through their metadata."""
    path = Path(path)
    if path.suffix in EXPORTED_SUFFIXES:
        return exported_card(path)
    if not path.is_file():
        raise ConfigError(f"model file {str(path)!r} does not exist")
    from mnv2.extras import require_torch

    require_torch(f"running the checkpoint {str(path)!r}", "or export it to .onnx/.tflite where torch is installed")
    from mnv2.weights.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(path)
    return meta.task, checkpoint_info(meta)
