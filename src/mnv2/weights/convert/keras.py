"""Keras MobileNetV2 weights and models (``.h5`` Keras 2/3, ``.keras`` Keras 3) → mnv2, read with h5py only.

Nothing from the file is executed: the weights are read as arrays and the model's JSON config is only inspected
to find the head (so Keras itself is not needed, and a ``Lambda`` layer is refused instead of run).

Sources handled:

* keras-applications weight files ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}[_no_top].h5``
  (Keras 2 ``save_weights`` layout: one group per layer, ``weight_names`` attributes), and Keras 3
  ``save_weights`` files (``.weights.h5``). Weights files say nothing about the head: a Dense head is assumed to
  end in softmax, as ``keras.applications`` builds it (``output="logits"`` overrides).
* Whole models saved with ``model.save("x.h5")`` (Keras 2 and 3: the same layout under ``model_weights`` plus a
  ``model_config`` JSON) and ``model.save("x.keras")`` (Keras 3: a zip of ``config.json`` and
  ``model.weights.h5`` whose ``layers/<...>/vars/<i>`` groups carry the layer name as an attribute).
* The transfer-learning shape: ``keras.applications.MobileNetV2`` inline or nested as a sub-model, optionally a
  ``Rescaling`` before it, then ``GlobalAveragePooling2D``, ``Dropout`` and a ``Dense`` head (linear or softmax).

Layer names are those of ``keras/src/applications/mobilenet_v2.py`` (``Conv1``, ``expanded_conv_*``,
``block_{id}_*``, ``Conv_1``), generated from the block plan. Numerics copied exactly: TF "SAME" padding (Keras's
``correct_pad`` + "valid" on stride-2 depthwise convs and ``padding="same"`` elsewhere are TF SAME), BN epsilon
1e-3 and momentum 0.999 (a decay; PyTorch momentum 0.001), inputs in [-1, 1] (``preprocess_input``, mode "tf").
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnv2.data.preprocessing import TF_MEAN, TF_STD, Preprocessing
from mnv2.models.layers import BN_EPS_TF, BN_MOMENTUM_KERAS, tf_decay_to_torch_momentum
from mnv2.models.mobilenetv2 import BlockSpec
from mnv2.weights.convert.common import (
    HDF5_MAGIC,
    ZIP_MAGIC,
    Converted,
    ConvertError,
    SourceLayout,
    build_converted,
    imagenet_class_names,
    infer_config,
    make_meta,
    read_magic,
    remap,
    resolution_or_default,
    sha256_file,
    structure,
)

# Kernel layouts: Keras Conv2D (kh, kw, in, out) -> PyTorch (out, in, kh, kw); DepthwiseConv2D (kh, kw, C, 1) ->
# (C, 1, kh, kw); Dense (in, out) -> Linear (out, in).
KERAS_CONV_TO_TORCH = (3, 2, 0, 1)
KERAS_DEPTHWISE_TO_TORCH = (2, 3, 0, 1)
KERAS_DENSE_TO_TORCH = (1, 0)
# keras.applications.MobileNetV2 eval preprocessing: preprocess_input(mode="tf") = x / 127.5 - 1, i.e. [-1, 1].
# The resize/crop is the TF-slim eval crop (central 87.5%), bilinear.
KERAS_PREPROCESSING = Preprocessing(224, 0.875, "bilinear", TF_MEAN, TF_STD)
KERAS_APP_FILE = re.compile(r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_([0-9.]+)_(\d+)(_no_top)?\.h5$")
KERAS_APP_MODEL = re.compile(r"mobilenetv2_([0-9.]+)_(\d+|None)$")  # the application model's name
# The application's body: every layer whose name matches belongs to MobileNetV2 itself, not to a user's head.
BODY_LAYER = re.compile(
    r"^(input_\w*|Conv1|bn_Conv1|Conv1_(pad|relu)|expanded_conv_\w+|block_\d+_\w+|Conv_1|Conv_1_bn|out_relu)$"
)
# Layers that do nothing at inference (Keras disables them outside training).
INFERENCE_NOOPS = {
    "InputLayer",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
    "Flatten",  # after global pooling: (N, C) stays (N, C)
}
MODEL_CLASSES = {"Functional", "Model", "Sequential"}


def _prefix(spec: BlockSpec) -> str:
    k = structure().index(spec)  # keras numbers blocks 0..16 in Table 2's order; block 0 is "expanded_conv"
    return "expanded_conv" if k == 0 else f"block_{k}"


def conv_name(spec: BlockSpec | None, part: str) -> tuple[str, str]:
    if part == "stem":
        return "Conv1/kernel", "bn_Conv1"
    if part == "head":
        return "Conv_1/kernel", "Conv_1_bn"
    p = f"{_prefix(spec)}_{ {'expand': 'expand', 'dw': 'depthwise', 'project': 'project'}[part] }"
    return f"{p}/kernel", f"{p}_BN"


def layout(dense: str | None) -> SourceLayout:
    return SourceLayout(
        conv_name=conv_name,
        bn_suffixes=("/gamma", "/beta", "/moving_mean", "/moving_variance"),
        bn_count_suffix=None,
        classifier=(f"{dense}/kernel", f"{dense}/bias") if dense else None,
        conv_perm=KERAS_CONV_TO_TORCH,
        dw_perm=KERAS_DEPTHWISE_TO_TORCH,
        dense_perm=KERAS_DENSE_TO_TORCH,
    )


# --- Reading the file ----------------------------------------------------------------------------------------------


def _decode(v: Any) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _weight_key(name: str) -> str:
    """``"Conv1/kernel:0"``, ``"mobilenetv2_1.00_224/Conv1/kernel"`` -> ``"Conv1/kernel"``."""
    parts = name.split(":")[0].split("/")
    kind = "kernel" if parts[-1] == "depthwise_kernel" else parts[-1]  # Keras 2 names depthwise kernels so
    return f"{parts[-2]}/{kind}" if len(parts) >= 2 else kind


def _read_legacy_h5(group) -> dict[str, np.ndarray]:
    """Keras 2 ``save_weights`` layout (also inside ``model_weights`` of whole-model .h5 files, Keras 2 and 3)."""
    out: dict[str, np.ndarray] = {}
    for layer in group.attrs["layer_names"]:
        g = group[_decode(layer)]
        for wn in g.attrs.get("weight_names", []):
            wn = _decode(wn)
            out[_weight_key(wn)] = np.asarray(g[wn])
    return out


# Keras 3 .keras: variables are stored by position; their names follow the layer's build order.
VAR_NAMES = {
    "Conv2D": lambda c: ["kernel", "bias"][: 1 + bool(c.get("use_bias", True))],
    "DepthwiseConv2D": lambda c: ["kernel", "bias"][: 1 + bool(c.get("use_bias", True))],
    "Dense": lambda c: ["kernel", "bias"][: 1 + bool(c.get("use_bias", True))],
    "BatchNormalization": lambda c: (
        (["gamma"] if c.get("scale", True) else [])
        + (["beta"] if c.get("center", True) else [])
        + ["moving_mean", "moving_variance"]
    ),
}


def _iter_layers(cfg: dict) -> Iterator[dict]:
    """Every layer dict in a Keras model config, depth first, nested models included."""
    for layer in (cfg.get("config") or {}).get("layers", []):
        yield layer
        if layer.get("class_name") in MODEL_CLASSES:
            yield from _iter_layers(layer)


def _layer_name(layer: dict) -> str:
    return layer.get("name") or layer.get("config", {}).get("name", "")


# Without a model config (a Keras 3 ``.weights.h5``), variables are named by their count, in build order.
VAR_NAMES_BY_COUNT = {1: ["kernel"], 2: ["kernel", "bias"], 4: ["gamma", "beta", "moving_mean", "moving_variance"]}


def _read_keras_v3(weights_h5, config: dict | None) -> dict[str, np.ndarray]:
    classes = {_layer_name(la): la for la in _iter_layers(config)} if config else None
    out: dict[str, np.ndarray] = {}

    def visit(g) -> None:
        for key in g:
            child = g[key]
            if not hasattr(child, "keys"):
                continue
            if "vars" in child and len(child["vars"]):
                name = _decode(child["vars"].attrs.get("name", key))
                arrays = [np.asarray(child["vars"][str(i)]) for i in range(len(child["vars"]))]
                layer = classes.get(name) if classes is not None else None
                if classes is None and len(arrays) in VAR_NAMES_BY_COUNT:
                    kinds = VAR_NAMES_BY_COUNT[len(arrays)]
                elif layer is None or layer.get("class_name") not in VAR_NAMES:
                    cls = layer.get("class_name") if layer else "unknown"
                    raise ConvertError(f"layer {name!r} ({cls}) has weights mnv2 does not know how to place")
                else:
                    kinds = VAR_NAMES[layer["class_name"]](layer.get("config", {}))
                if len(arrays) != len(kinds):
                    raise ConvertError(f"layer {name!r} holds {len(arrays)} variables; expected {kinds}")
                out.update({f"{name}/{k}": a for k, a in zip(kinds, arrays)})
            visit(child)

    visit(weights_h5.get("layers", weights_h5))  # not "optimizer": its state is no weight
    return out


def read_keras_file(path: Path) -> tuple[dict[str, np.ndarray], dict | None, dict[str, str]]:
    """Return ``(arrays by "layer/kind", model config or None, file info)``."""
    try:
        import h5py
    except ImportError as e:
        raise ConvertError("reading Keras files needs h5py: pip install 'mnv2[interop]'") from e

    magic = read_magic(path)
    info: dict[str, str] = {}
    try:
        if magic == HDF5_MAGIC:
            with h5py.File(path, "r") as f:
                info = {k: _decode(f.attrs[k]) for k in ("keras_version", "backend") if k in f.attrs}
                config = json.loads(_decode(f.attrs["model_config"])) if "model_config" in f.attrs else None
                if "layers" in f and "layer_names" not in f.attrs:  # Keras 3 save_weights (.weights.h5)
                    return _read_keras_v3(f, None), None, info
                group = f.get("model_weights", f)
                if "layer_names" not in group.attrs:
                    raise ConvertError(f"{str(path)!r} is an HDF5 file but not a Keras model or weights file")
                info.setdefault("keras_version", _decode(group.attrs.get("keras_version", "")))
                return _read_legacy_h5(group), config, info
        if magic[:4] == ZIP_MAGIC:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if not {"config.json", "model.weights.h5"} <= names:
                    raise ConvertError(f"{str(path)!r} is a zip archive but not a .keras model")
                config = json.loads(z.read("config.json"))
                meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
                info = {"keras_version": str(meta.get("keras_version", ""))}
                with z.open("model.weights.h5") as wf, h5py.File(wf, "r") as f:
                    return _read_keras_v3(f, config), config, info
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, ConvertError):
            raise
        raise ConvertError(f"{str(path)!r} is truncated or not a readable Keras file ({e})") from e
    raise ConvertError(f"{str(path)!r} is neither an HDF5 (.h5) nor a zip (.keras) Keras file")


# --- Understanding the model around the MobileNetV2 body ---------------------------------------------------------


def _find_body(config: dict) -> tuple[list[dict], dict | None]:
    """Top-level layers around the body, and the nested body model config (None when inline)."""
    top = list((config.get("config") or {}).get("layers", []))
    for layer in top:
        if layer.get("class_name") in MODEL_CLASSES:
            inner = [_layer_name(la) for la in (layer.get("config") or {}).get("layers", [])]
            if "Conv1" in inner and "Conv_1" in inner:
                return top, layer
    return top, None


def _input_size(config: dict) -> int | None:
    for layer in _iter_layers(config):
        if layer.get("class_name") == "InputLayer":
            c = layer.get("config", {})
            shape = c.get("batch_shape") or c.get("batch_input_shape")
            if shape and len(shape) == 4 and shape[1]:
                return int(shape[1])
    return None


def _pair(v: Any) -> tuple | None:
    if isinstance(v, int):
        return (v, v)
    return tuple(v) if isinstance(v, (list, tuple)) else None


def _expected_body() -> dict[str, tuple[str, int, int]]:
    """keras.applications.MobileNetV2's conv layers: name -> (kind, kernel, stride)."""
    out = {"Conv1": ("Conv2D", 3, 2), "Conv_1": ("Conv2D", 1, 1)}
    for spec in structure():
        p = _prefix(spec)
        if spec.expand_ratio != 1:
            out[f"{p}_expand"] = ("Conv2D", 1, 1)
        out[f"{p}_depthwise"] = ("DepthwiseConv2D", 3, spec.stride)
        out[f"{p}_project"] = ("Conv2D", 1, 1)
    return out


def _is_relu6(layer: dict) -> bool:
    cls, c = layer.get("class_name"), layer.get("config", {})
    if cls == "ReLU":
        mx = c.get("max_value")
        return mx is not None and float(mx) == 6.0 and not float(c.get("negative_slope") or 0.0)
    if cls == "Activation":
        return c.get("activation") == "relu6"
    return False


def _describe_layer(layer: dict) -> str:
    cls, c = layer.get("class_name"), layer.get("config", {})
    if cls == "Activation":
        return f"Activation({c.get('activation')!r})"
    if cls == "ReLU":
        return f"ReLU(max_value={c.get('max_value')}, negative_slope={c.get('negative_slope', 0.0)})"
    return str(cls)


def _differs(name: str, what: str) -> ConvertError:
    return ConvertError(f"body layer {name!r} differs from MobileNetV2: {what}")


def check_body(body_layers: list[dict]) -> None:
    """Every layer of the body must be MobileNetV2's: kind, activation, kernel, stride and padding; the first that
    differs is named (e.g. a swish where the paper has ReLU6 would convert to different outputs)."""
    expected = _expected_body()
    names = {_layer_name(la) for la in body_layers}
    missing = [n for n in expected if n not in names]
    if missing:
        raise ConvertError(f"the MobileNetV2 body has no layer {missing[0]!r} ({len(missing)} missing)")
    for la in body_layers:
        name, cls, c = _layer_name(la), la.get("class_name"), la.get("config", {})

        if name in expected:
            kind, kernel, stride = expected[name]
            if cls != kind:
                raise _differs(name, f"{cls}, expected {kind}")
            if c.get("activation", "linear") not in ("linear", None):
                raise _differs(
                    name, f"activation {c.get('activation')!r}, expected linear (the ReLU6 is its own layer)"
                )
            if _pair(c.get("kernel_size")) != (kernel, kernel):
                raise _differs(name, f"kernel {c.get('kernel_size')}, expected {kernel}x{kernel}")
            if _pair(c.get("strides", 1)) != (stride, stride):
                raise _differs(name, f"stride {c.get('strides')}, expected {stride}")
            if _pair(c.get("dilation_rate", 1)) not in ((1, 1), None):
                raise _differs(name, f"dilation {c.get('dilation_rate')}, expected 1")
            if int(c.get("groups", 1) or 1) != 1 or int(c.get("depth_multiplier", 1) or 1) != 1:
                raise _differs(name, "grouped conv or depth multiplier != 1")
            padding = c.get("padding", "valid")
            # TF SAME: "same", or "valid" after Keras's explicit ZeroPadding2D (stride 2) / on a 1x1 conv
            pad_layer = f"{name[: -len('_depthwise')]}_pad" if name.endswith("_depthwise") else f"{name}_pad"
            if padding != "same" and not (kernel == 1 or (padding == "valid" and pad_layer in names)):
                raise _differs(name, f"padding {padding!r} without the zero padding MobileNetV2 needs")
        elif name.endswith("_relu") or name == "out_relu":
            if not _is_relu6(la):
                raise _differs(name, f"{_describe_layer(la)}, expected ReLU6 (ReLU with max_value 6)")
        elif name.endswith(("_BN", "_bn")) or name == "bn_Conv1":
            if cls != "BatchNormalization":
                raise _differs(name, f"{cls}, expected BatchNormalization")
        elif name.endswith("_pad"):
            if cls != "ZeroPadding2D":
                raise _differs(name, f"{cls}, expected ZeroPadding2D")
        elif name.endswith("_add"):
            if cls != "Add":
                raise _differs(name, f"{cls}, expected Add")
        elif cls not in ("InputLayer",) and not name.startswith("input"):
            raise _differs(name, f"unexpected {cls} layer inside the body")


def _analyse(config: dict) -> dict[str, Any]:
    """Head, BN settings and input scaling of a saved Keras model, from its config alone."""
    top, body = _find_body(config)
    body_layers = list(_iter_layers(body)) if body else [la for la in top if BODY_LAYER.match(_layer_name(la))]
    if not any(_layer_name(la) == "Conv1" for la in body_layers):
        raise ConvertError("no keras.applications.MobileNetV2 body (layers Conv1 ... Conv_1) in this Keras model")
    for la in _iter_layers(config):
        if la.get("class_name") in ("Lambda", "TFOpLambda", "SlicingOpLambda"):
            raise ConvertError(
                f"layer {_layer_name(la)!r} is a {la['class_name']}: it holds arbitrary Python code, which mnv2 never "
                "runs; rebuild the model without it (e.g. use keras.layers.Rescaling for input scaling)"
            )
    check_body(body_layers)
    out: dict[str, Any] = {"dense": None, "activation": None, "dropout": None, "pooled": False, "rescale": None}
    bns = [la.get("config", {}) for la in body_layers if la.get("class_name") == "BatchNormalization"]
    eps = {float(c.get("epsilon", BN_EPS_TF)) for c in bns}
    momentum = {float(c.get("momentum", 0.999)) for c in bns}
    if len(eps) > 1 or len(momentum) > 1:
        raise ConvertError(f"BatchNormalization layers disagree: epsilon {sorted(eps)}, momentum {sorted(momentum)}")
    out["bn_eps"], out["bn_decay"] = eps.pop() if eps else BN_EPS_TF, momentum.pop() if momentum else 0.999
    seen_body = False
    for la in top:
        name, cls, c = _layer_name(la), la.get("class_name"), la.get("config", {})
        if la is body or BODY_LAYER.match(name):
            seen_body = seen_body or la is body or name == "Conv1"
            continue
        if cls in INFERENCE_NOOPS:
            if cls == "Dropout" and seen_body:
                out["dropout"] = float(c.get("rate", 0.0))
            continue
        if cls == "Rescaling" and not seen_body:
            scale, offset = c.get("scale", 1.0), c.get("offset", 0.0)
            if not all(isinstance(v, (int, float)) for v in (scale, offset)):
                raise ConvertError(f"layer {name!r}: only a scalar Rescaling scale/offset can be recorded")
            out["rescale"] = (float(scale), float(offset))
        elif cls == "GlobalAveragePooling2D" and seen_body and not out["pooled"]:
            out["pooled"] = True
        elif cls == "Dense" and out["pooled"] and out["dense"] is None:
            out["dense"] = name
            out["activation"] = c.get("activation", "linear")
        elif cls in ("Activation", "Softmax") and out["dense"] and out["activation"] == "linear":
            out["activation"] = "softmax" if cls == "Softmax" else c.get("activation")
        else:
            raise ConvertError(
                f"layer {name!r} ({cls}) is not supported around the MobileNetV2 body: mnv2 reproduces "
                "[Rescaling] -> MobileNetV2 -> GlobalAveragePooling2D -> [Dropout] -> [Dense (linear or softmax)]"
            )
    if out["activation"] not in (None, "linear", "softmax"):
        raise ConvertError(f"Dense head {out['dense']!r} ends in {out['activation']!r}; only linear or softmax fit")
    out["input_size"] = _input_size(config)
    out["body_name"] = _layer_name(body) if body else (config.get("config") or {}).get("name")
    return out


def convert_keras(path: str | Path, *, output: str | None = None) -> Converted:
    """Convert a Keras MobileNetV2 weights file or saved model (``.h5`` / ``.keras``).

    Args:
        path: the file.
        output: ``"logits"`` or ``"softmax"`` to override what the Keras head produces (default: the same as the
            Keras model: softmax when its Dense head ends in softmax, as ``keras.applications`` does by default).
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{str(path)!r} does not exist")
    arrays, config, info = read_keras_file(path)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    alpha = size = None
    m = KERAS_APP_FILE.search(path.name)
    if config is None:  # a weights file: assume the application model's head (Dense "predictions", softmax)
        kernels2d = [k[: -len("/kernel")] for k, v in tensors.items() if k.endswith("/kernel") and v.dim() == 2]
        dense = "predictions" if "predictions" in kernels2d else kernels2d[0] if len(kernels2d) == 1 else None
        head = {"dense": dense, "activation": "softmax" if dense else None, "dropout": None, "pooled": bool(dense)}
        head.update({"bn_eps": BN_EPS_TF, "bn_decay": 0.999, "rescale": None, "input_size": None})
        if m:
            alpha, size = float(m.group(1)), int(m.group(2))
    else:
        head = _analyse(config)
        size = head["input_size"]
        mm = KERAS_APP_MODEL.search(head.get("body_name") or "")
        if mm:
            alpha = float(mm.group(1))
            size = size or (int(mm.group(2)) if mm.group(2) != "None" else None)
    if "predictions/kernel" in tensors and head["dense"] is None and config is not None:
        head["dense"] = "predictions"
    if head["dense"] and head["activation"] is None:
        head["activation"] = "linear"
    remapped = remap(tensors, layout(head["dense"]))
    bn_momentum = BN_MOMENTUM_KERAS if head["bn_decay"] == 0.999 else tf_decay_to_torch_momentum(head["bn_decay"])
    out = output or ("softmax" if head["activation"] == "softmax" else "logits")
    config_ = infer_config(
        remapped,
        str(path),
        width_hint=alpha,
        padding="tf",
        bn_eps=head["bn_eps"],
        bn_momentum=bn_momentum,
        dropout=head["dropout"] if head["dropout"] is not None else 0.0,
        output=out,
    )
    model = build_converted(remapped, config_, str(path))
    mean, std = TF_MEAN, TF_STD
    if head[
        "rescale"
    ]:  # Rescaling(s, o) on 0..255 pixels == normalising [0, 1] pixels by mean -o/(255 s), std 1/(255 s)
        s, o = head["rescale"]
        std = tuple(1 / (255 * s) for _ in TF_STD)
        mean = tuple(-o / (255 * s) for _ in TF_MEAN)
    pre = Preprocessing(
        resolution_or_default(size), KERAS_PREPROCESSING.crop_pct, KERAS_PREPROCESSING.interpolation, mean, std
    )
    source = {
        "framework": "keras",
        "format": "keras_v3" if path.suffix == ".keras" else "h5",
        "file": path.name,
        "sha256": sha256_file(path),
        "keras_version": info.get("keras_version", ""),
        "kind": "model" if config is not None else "weights",
        "head_activation": head["activation"],
        "output": out,
    }
    if config is not None and head["input_size"] is None:
        source["padding_note"] = (
            "built with an unknown input size: Keras then pads stride-2 depthwise convs (0, 1) at every size, TF SAME "
            "only while each stride-2 input is even (e.g. 96, 128, 224); mnv2 uses TF SAME at every size"
        )
    if config_.num_classes == 0:
        source["note"] = "no classifier: use model.forward_features for the Keras model's feature map"
    return Converted(model, make_meta(config_, pre, source, imagenet_class_names(config_.num_classes)))
