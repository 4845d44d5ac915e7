"""What every converter shares: key maps derived from the block plan, safe tensor loading, width inference, and
assembly of an mnv2 model whose state dict is checked tensor by tensor against the source's names and shapes.

A converter maps each mnv2 ``ConvNormAct`` (``stem``, ``blocks.{stage}.{i}.{expand,dw,project}``, ``head``) to the
source's conv and BatchNorm names. Those maps are functions of :class:`~mnv2.models.mobilenetv2.BlockSpec`, so no
per-layer table is typed by hand: the block list comes from Table 2 via ``block_plan``.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mnv2.data.preprocessing import Preprocessing
from mnv2.files import sha256_file
from mnv2.models.layers import BN_EPS_TORCH, BN_MOMENTUM_TORCH
from mnv2.models.mobilenetv2 import BlockSpec, MobileNetV2, MobileNetV2Config, block_plan
from mnv2.models.registry import PUBLISHED_RESOLUTIONS
from mnv2.weights.checkpoint import CheckpointError, CheckpointMeta

# Widths tried first when inferring the width multiplier from channel counts (TF-slim / Keras / timm published set).
PUBLISHED_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
# Then every multiple of 0.05 and 0.01 up to 3.0: any width whose rounded channel plan matches builds the same model.
CANDIDATE_WIDTHS = PUBLISHED_WIDTHS + tuple(i / 20 for i in range(1, 61)) + tuple(i / 100 for i in range(5, 301))

# ILSVRC-2012 class names in the standard index order (copied from torchvision's _IMAGENET_CATEGORIES; the same order
# as Keras' imagenet_class_index.json and TF-slim's labels after its background class).
IMAGENET_CLASSES_FILE = Path(str(resources.files("mnv2.data") / "imagenet_classes.txt"))  # package data
BACKGROUND_CLASS = "background"  # TF-slim checkpoints: 1001 outputs, index 0 = background (paper.md §5)
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")  # mnv2 / PyTorch BatchNorm2d tensor names


class ConvertError(CheckpointError):
    """A source file cannot be converted: unreadable, unsafe, or not a MobileNetV2 that mnv2 can reproduce."""


# --- Key maps derived from the architecture ----------------------------------------------------------------------


def structure() -> list[BlockSpec]:
    """The block list of Table 2; its stages, indices and expand flags do not depend on the width."""
    return block_plan(MobileNetV2Config())


def conv_modules(plan: Iterable[BlockSpec] | None = None) -> list[tuple[str, BlockSpec | None, str]]:
    """Every mnv2 ``ConvNormAct`` in execution order as ``(module name, block spec or None, part)``.

    ``part`` is ``"stem"``, ``"expand"``, ``"dw"``, ``"project"`` or ``"head"``.
    """
    out: list[tuple[str, BlockSpec | None, str]] = [("stem", None, "stem")]
    for b in structure() if plan is None else plan:
        for part in ("expand", "dw", "project"):
            if part != "expand" or b.has_expand:
                out.append((f"{b.name}.{part}", b, part))
    out.append(("head", None, "head"))
    return out


@dataclass(frozen=True)
class SourceLayout:
    """How a source names and lays out one conv + BatchNorm pair and the classifier.

    ``conv_name(spec, part)`` returns ``(conv weight key, BN key prefix)``; BN tensors are ``prefix + suffix`` for
    ``bn_suffixes`` in mnv2's order (weight/gamma, bias/beta, running_mean, running_var). ``*_perm`` permute a
    source kernel into PyTorch's layout (``None``: already PyTorch's).
    """

    conv_name: Callable[[BlockSpec | None, str], tuple[str, str]]
    bn_suffixes: tuple[str, str, str, str] = tuple(f".{p}" for p in BN_PARAMS)
    bn_count_suffix: str | None = ".num_batches_tracked"
    classifier: tuple[str, str] | None = ("classifier.weight", "classifier.bias")
    conv_perm: tuple[int, ...] | None = None
    dw_perm: tuple[int, ...] | None = None
    dense_perm: tuple[int, ...] | None = None


@dataclass
class Remapped:
    """A source state dict renamed to mnv2 keys, with what could not be placed."""

    state: dict[str, torch.Tensor]
    source_key: dict[str, str]  # mnv2 key -> source key, for error messages
    missing: list[str] = field(default_factory=list)  # source keys the architecture needs but the file lacks
    unused: dict[str, tuple[int, ...]] = field(default_factory=dict)  # source tensors that fit nowhere


def remap(tensors: dict[str, torch.Tensor], layout: SourceLayout) -> Remapped:
    """Rename ``tensors`` from the source's keys to mnv2's, applying the layout's kernel permutations."""
    out = Remapped({}, {})
    used: set[str] = set()

    def take(src: str, dst: str, perm: tuple[int, ...] | None = None) -> None:
        if src not in tensors:
            out.missing.append(src)
            return
        t = torch.as_tensor(tensors[src])
        if perm is not None:
            if t.dim() != len(perm):
                raise ConvertError(f"{src} has shape {tuple(t.shape)}; expected a {len(perm)}-d kernel")
            t = t.permute(*perm)
        out.state[dst] = t.contiguous()
        out.source_key[dst] = src
        used.add(src)

    for name, spec, part in conv_modules():
        conv_key, bn_prefix = layout.conv_name(spec, part)
        take(conv_key, f"{name}.conv.weight", layout.dw_perm if part == "dw" else layout.conv_perm)
        for suffix, param in zip(layout.bn_suffixes, BN_PARAMS):
            take(bn_prefix + suffix, f"{name}.bn.{param}")
        count = f"{bn_prefix}{layout.bn_count_suffix}" if layout.bn_count_suffix else None
        if count and count in tensors:
            take(count, f"{name}.bn.num_batches_tracked")
    if layout.classifier and layout.classifier[0] in tensors:
        take(layout.classifier[0], "classifier.weight", layout.dense_perm)
        take(layout.classifier[1], "classifier.bias")
    out.unused = {k: tuple(np.shape(v)) for k, v in tensors.items() if k not in used}
    return out


# --- Width / class inference ---------------------------------------------------------------------------------------


def _signature(config: MobileNetV2Config) -> list[tuple[str, int]]:
    plan = block_plan(config)
    sig = [("stem", config.stem_channels)]
    for b in plan:
        if b.has_expand:
            sig.append((f"{b.name}.expand", b.hidden_channels))
        sig += [(f"{b.name}.dw", b.hidden_channels), (f"{b.name}.project", b.out_channels)]
    sig.append(("head", config.head_channels))
    return sig


def infer_config(
    remapped: Remapped, source: str, *, width_hint: float | None = None, **config_args: Any
) -> MobileNetV2Config:
    """The :class:`MobileNetV2Config` whose channel plan matches the weights (width, classes, input channels).

    Tries ``width_hint`` (e.g. Keras' alpha), then the published widths, then a fine grid; raises a
    :class:`ConvertError` naming each source tensor whose shape fits no width.
    """
    state = remapped.state
    if remapped.missing:
        raise ConvertError(
            f"{source} is missing {len(remapped.missing)} tensor(s) a MobileNetV2 needs, e.g. "
            + ", ".join(remapped.missing[:6])
        )
    if remapped.unused:
        items = [f"{k} {v}" for k, v in list(remapped.unused.items())[:6]]
        raise ConvertError(
            f"{source} has {len(remapped.unused)} tensor(s) that are not part of MobileNetV2 (Table 2): "
            + ", ".join(items)
        )
    have = {name: int(state[f"{name}.conv.weight"].shape[0]) for name, _, _ in conv_modules()}
    in_chans = int(state["stem.conv.weight"].shape[1])
    num_classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else 0
    base = {"in_chans": in_chans, "num_classes": num_classes, **config_args}
    candidates = ((width_hint,) if width_hint else ()) + CANDIDATE_WIDTHS
    best, best_bad = None, None
    for w in candidates:
        config = MobileNetV2Config(width_mult=w, **base)
        bad = [(n, c) for n, c in _signature(config) if have[n] != c]
        if not bad:
            return config
        if best_bad is None or len(bad) < len(best_bad):
            best, best_bad = config, bad
    details = "; ".join(
        f"{remapped.source_key[f'{n}.conv.weight']} {tuple(state[f'{n}.conv.weight'].shape)} (width {best.width_mult} "
        f"needs {c} channels)"
        for n, c in best_bad[:5]
    )
    raise ConvertError(f"{source}: channel counts fit MobileNetV2 at no width multiplier; nearest: {details}")


def build_converted(remapped: Remapped, config: MobileNetV2Config, source: str) -> MobileNetV2:
    """An eval-mode mnv2 model holding the remapped weights; every shape is checked against the architecture."""
    model = MobileNetV2(config)
    own = model.state_dict()
    state = dict(remapped.state)
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)  # TF/Keras keep no update count; BN ignores it at inference
    bad = [
        f"{remapped.source_key.get(k, k)} {tuple(state[k].shape)} -> {k} expects {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise ConvertError(
            f"{source} does not fit MobileNetV2 (width {config.width_mult}): "
            + "; ".join(bad[:5] + [f"no tensor for {k}" for k in missing[:5]])
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model.eval()


# --- Safe file access ---------------------------------------------------------------------------------------------

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"


def read_magic(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` dict from ``.safetensors`` or a PyTorch pickle, never running code.

    PyTorch files go through ``torch.load(weights_only=True)``: a file that pickles Python objects (a whole
    ``nn.Module``, custom classes) is refused. Training checkpoints holding the weights under ``state_dict`` or
    ``model`` are unwrapped, and ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile) are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{str(path)!r} does not exist")
    head = read_magic(path, 9)
    if head[:4] != ZIP_MAGIC and head[:1] != b"\x80":  # neither a torch zip archive nor a legacy pickle
        if head[8:9] != b"{":  # safetensors: 8-byte header length, then the JSON header
            raise ConvertError(f"{str(path)!r} is neither a safetensors nor a PyTorch weights file")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ConvertError(f"{str(path)!r} is truncated or not a safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConvertError(
            f"refusing {str(path)!r}: loading it would run arbitrary code (it pickles Python objects, not just "
            f"tensors). mnv2 loads PyTorch files only with torch.load(weights_only=True); save "
            f"model.state_dict() instead. Detail: {str(e).splitlines()[-1][:200]}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, SafetensorError) as e:
        raise ConvertError(f"{str(path)!r} is truncated or not a PyTorch/safetensors weights file ({e})") from e
    return flatten_state(obj, str(path))


def flatten_state(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"{source} holds no state dict of tensors (found {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


# --- Metadata ------------------------------------------------------------------------------------------------------


def imagenet_class_names(num_classes: int) -> list[str] | None:
    """ImageNet-1k names (1000), or background + those (1001, TF-slim); ``None`` for other class counts."""
    names = IMAGENET_CLASSES_FILE.read_text().splitlines()
    if num_classes == len(names):
        return names
    if num_classes == len(names) + 1:
        return [BACKGROUND_CLASS, *names]
    return None


def resolution_or_default(size: int | None) -> int:
    return int(size) if size else max(PUBLISHED_RESOLUTIONS)


@dataclass
class Converted:
    """A converted model with the metadata its checkpoint will carry."""

    model: MobileNetV2
    meta: CheckpointMeta

    def __post_init__(self) -> None:
        self.model.meta = self.meta


def make_meta(
    config: MobileNetV2Config,
    preprocessing: Preprocessing,
    source: dict[str, Any],
    class_names: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
) -> CheckpointMeta:
    if class_names is not None and len(class_names) != config.num_classes:
        class_names = None
    return CheckpointMeta(
        model_config=config,
        preprocessing=preprocessing,
        class_names=class_names,
        source=source,
        metrics=dict(metrics or {}),
    )


def convert_torch_state_dict(
    path: str | Path, tensors, layout: SourceLayout, framework: str, preprocessing: Preprocessing
) -> Converted:
    """Convert a PyTorch MobileNetV2 state dict (torchvision, timm): PyTorch layouts, BN eps 1e-5, symmetric padding,
    so the tensors copy as they are once ``layout`` has renamed them."""
    path = Path(path)
    tensors = load_tensors(path) if tensors is None else tensors
    remapped = remap(tensors, layout)
    config = infer_config(
        remapped, str(path), padding="torch", bn_eps=BN_EPS_TORCH, bn_momentum=BN_MOMENTUM_TORCH, dropout=0.2
    )
    model = build_converted(remapped, config, str(path))
    source = {"framework": framework, "format": path.suffix.lstrip("."), "file": path.name, "sha256": sha256_file(path)}
    return Converted(model, make_meta(config, preprocessing, source, imagenet_class_names(config.num_classes)))
