"""A model file's card: what the inference half of its task needs to know (task, classes, preprocessing, output
kind, head arguments, fixed input size), read from any model file mnv2 writes, without torch for exported files.

- ``.onnx``: the ``mnv2.*`` entries of the graph's ``metadata_props``, read straight from the protobuf wire format
  (field 14 of ``ModelProto``): no ``onnx`` package, and the weights are skipped over, never parsed.
- ``.tflite``: ``<file>.tflite.json`` beside it (TFLite converters fill no free-form metadata table).
- ``.safetensors``: the checkpoint's own metadata (``mnv2.weights.checkpoint``; needs torch, as running it does).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from mnv2.data.preprocessing import Preprocessing
from mnv2.errors import ConfigError
from mnv2.tasks import DEFAULT_TASK  # files exported before tasks existed are classifiers

METADATA_PREFIX = "mnv2."
EXPORTED_SUFFIXES = (".onnx", ".tflite")
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
            out[key] = json.loads(v) if isinstance(v, str) else v
        except json.JSONDecodeError:
            out[key] = v
        except RecursionError as e:  # JSON nested thousands deep
            raise ConfigError(f"the model's metadata {key!r} is nested too deeply to read") from e
    if "preprocessing" in out:
        out["preprocessing"] = Preprocessing.from_dict(out["preprocessing"], "the model's card (preprocessing)")
    return out


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The ``mnv2.*`` metadata of an exported file: in the graph for ONNX, in ``<file>.json`` for TFLite/ExecuTorch.
    Empty when a non-ONNX file has no such sidecar.

    Read once per file version: opening a model asks for its card, its precision and its output kind, and an ONNX
    file is read whole to find its metadata (issue 25's review: three reads of the file at every start)."""
    path = Path(path)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"ONNX file {str(path)!r} does not exist")
        source = path
    else:
        source = Path(str(path) + ".json")
        if not source.is_file():
            return {}
    stat = source.stat()
    return dict(_read_metadata(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=32)
def _read_metadata(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """:func:`read_model_metadata` of one version of a file (the key holds its mtime and size)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return decode_metadata(onnx_metadata_props(path))
    sidecar = Path(str(path) + ".json")
    try:
        pairs = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{str(sidecar)!r} is not mnv2 metadata JSON ({e})") from e
    if not isinstance(pairs, dict):
        raise ConfigError(f"{str(sidecar)!r} is not mnv2 metadata JSON (not an object)")
    return decode_metadata(pairs)


def fixed_input_hw(file_meta: dict) -> tuple[int, int] | None:
    """An exported NCHW graph's fixed ``(height, width)`` from its metadata; None when symbolic or unknown."""
    spec = file_meta.get("input")
    shape = spec.get("input_shape") if isinstance(spec, dict) else None
    if isinstance(shape, list) and len(shape) == 4 and spec.get("layout", "NCHW") == "NCHW":
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
    if names is None:
        names = (
            (meta.get("model_config") or {}).get("num_classes") if isinstance(meta.get("model_config"), dict) else None
        )
    info = {
        "preprocessing": meta["preprocessing"],
        "class_names": names,
        "output": meta.get("output", "logits"),
        "head": meta.get("head"),
        "input_hw": fixed_input_hw(meta),
        "tile": meta.get("tile"),
    }
    task = meta.get("task", DEFAULT_TASK)
    check_card(task, info, str(path))
    return task, info


OUTPUT_KINDS = ("logits", "probabilities", "boxes_scores")  # what an exported graph's output may be
MAX_CLASSES = 100_000


def check_card(task: Any, info: dict, where: str) -> None:
    """A card's values, validated as a checkpoint's are (issue 28, 5: crafted metadata must be a one-line error, not a
    11 GB allocation or "nan%"): the task is known, class names are strings (or a count), the output kind is one of
    :data:`OUTPUT_KINDS`, the head is an object and a fixed input size is within the architecture's limits. The
    preprocessing was validated when it was read (``Preprocessing``: finite, sizes in range); the graph's own shapes
    are checked against the card when the engine is open (``mnv2.deploy.runtime.predict.Predictor.open``)."""
    from mnv2.data.preprocessing import MAX_INPUT_SIZE, MIN_INPUT_SIZE
    from mnv2.tasks import TASK_NAMES

    if task not in TASK_NAMES:
        raise ConfigError(f"{where!r}: its card names the task {task!r}; mnv2 knows {', '.join(TASK_NAMES)}")
    names = info["class_names"]
    if isinstance(names, bool) or not (
        (isinstance(names, int) and 1 <= names <= MAX_CLASSES)
        or (isinstance(names, list) and 1 <= len(names) <= MAX_CLASSES and all(isinstance(n, str) for n in names))
    ):
        raise ConfigError(f"{where!r}: its card's class names must be 1 to {MAX_CLASSES:,} strings (or a class count), "
                          f"got {str(names)[:80]}")  # fmt: skip
    if info["output"] not in OUTPUT_KINDS:
        raise ConfigError(f"{where!r}: its card's output kind {str(info['output'])[:40]!r} is none of "
                          f"{', '.join(OUTPUT_KINDS)}")  # fmt: skip
    if info["head"] is not None and not isinstance(info["head"], dict):
        raise ConfigError(f"{where!r}: its card's head must be an object, got {type(info['head']).__name__}")
    hw = info["input_hw"]
    if hw is not None and not all(MIN_INPUT_SIZE <= v <= MAX_INPUT_SIZE for v in hw):
        raise ConfigError(f"{where!r}: its card's input size {hw[1]}x{hw[0]} is outside "
                          f"[{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}]")  # fmt: skip
    tile = info.get("tile")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_INPUT_SIZE):
        raise ConfigError(f"{where!r}: its card's training tile must be a whole number of pixels >= {MIN_INPUT_SIZE}, "
                          f"got {str(tile)[:40]}")  # fmt: skip


def training_tile(config: dict | None) -> int | None:
    """The tile side a model was trained on (``--tile``, a task option in its run config), or None: ``mnv2 eval`` and
    ``mnv2 predict`` cut images into tiles of that side unless told otherwise (``--tile 0``)."""
    options = (config or {}).get("options")
    return options.get("tile") if isinstance(options, dict) else None


def checkpoint_info(meta) -> dict:
    """What a task's inference half needs of a checkpoint (its ``CheckpointMeta``): preprocessing, class names (or
    their count), output kind and head arguments, and the tile it was trained on."""
    return {
        "preprocessing": meta.preprocessing,
        "class_names": meta.class_names or meta.model_config.num_classes,
        "output": meta.model_config.output_kind,
        "head": meta.head,
        "tile": training_tile(meta.config),
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
