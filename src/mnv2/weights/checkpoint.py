"""Self-describing checkpoints: safetensors weights plus JSON metadata in the same file.

A checkpoint holds the model's state dict (unwrapped: no ``module.`` or ``_orig_mod.`` prefixes) and, in the
safetensors header under the key ``"mnv2"``, a JSON document: architecture arguments, preprocessing, class names,
what the output is, provenance, training config, metrics and the package version. :func:`load_checkpoint`
rebuilds the model from the file alone. Nothing is unpickled.

Training state for ``--resume`` (optimizer, scheduler, EMA, RNG) is separate and loaded with
``torch.load(weights_only=True)`` by the engine.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from mnv2.data.preprocessing import Preprocessing
from mnv2.errors import ConfigError, Mnv2Error
from mnv2.files import atomic_write
from mnv2.models.mobilenetv2 import MobileNetV2Config
from mnv2.models.utils import unwrap
from mnv2.tasks import DEFAULT_TASK, get_task
from mnv2.typed import strict_from_dict

FORMAT_VERSION = 1
METADATA_KEY = "mnv2"


class CheckpointError(Mnv2Error):
    """A checkpoint file is missing, truncated, not an mnv2 checkpoint, or does not fit the architecture."""


@dataclass
class CheckpointMeta:
    """Everything needed to use a checkpoint, besides the weights.

    Attributes:
        model_config: architecture arguments (padding mode, BN eps, width, classes, ...).
        preprocessing: how to turn an image into the model's input.
        class_names: one name per output (``None`` when unknown).
        source: provenance, e.g. ``{"framework": "keras", "file": "...", "sha256": "..."}``.
        config: the resolved training config (``None`` for imported weights).
        metrics: evaluation results, e.g. ``{"top1": 95.1}``.
        package_version: mnv2 version that wrote the file.
        task: which ``mnv2.tasks`` task the model serves; files written before tasks existed are classifiers.
        head: the task head's arguments (``None`` for classification, whose head is part of ``model_config``).
        image_size: ``[height, width]`` of the images the model was evaluated on when they share one size (a
            segmenter, which runs at each image's own size); exports default to it (``mnv2 export``).
    """

    model_config: MobileNetV2Config
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    class_names: list[str] | None = None
    source: dict[str, Any] = field(default_factory=lambda: {"framework": "mnv2"})
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    package_version: str = ""
    format_version: int = FORMAT_VERSION
    task: str = DEFAULT_TASK
    head: dict[str, Any] | None = None
    image_size: list[int] | None = None

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["model_config"] = self.model_config.to_dict()
        d["preprocessing"] = self.preprocessing.to_dict()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise CheckpointError(f"the mnv2 metadata is not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise CheckpointError(f"the mnv2 metadata must be a JSON object, not {type(d).__name__}")
        version = d.get("format_version", 0)
        if not isinstance(version, int):
            raise CheckpointError(f"the mnv2 metadata's format_version {version!r} is not an integer")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format {d['format_version']} is newer than this mnv2 understands")
        for key in ("model_config", "preprocessing"):
            if not isinstance(d.get(key), dict):
                raise CheckpointError(f"the mnv2 metadata has no {key!r} object (got {d.get(key)!r})")
        names = d.get("class_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise CheckpointError("the mnv2 metadata's class_names must be a list of strings")
        try:
            d["model_config"] = MobileNetV2Config.from_dict(d["model_config"])
            d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
            return strict_from_dict(cls, d, "checkpoint metadata")
        except Mnv2Error:
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"the mnv2 metadata is invalid ({type(e).__name__}: {e})") from e


class NonFiniteError(Mnv2Error):
    """Weights or a loss became NaN or infinite (training diverged); nothing non-finite is written."""


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors of ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta, half: bool = False) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` (a ``.safetensors`` file), atomically.

    ``half`` stores the conv and linear weights (every float tensor of 2 or more dimensions) as fp16, which halves a
    file that ships in a repository; BN statistics and biases stay fp32, and :func:`load_checkpoint` restores fp32.
    """
    from mnv2._version import __version__

    model = unwrap(model)
    meta = dataclasses.replace(meta, package_version=__version__)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() and v.dim() >= 2 else v for k, v in state.items()}
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteError(
            f"refusing to write {str(path)!r}: {len(bad)} tensor(s) hold NaN or inf, e.g. {', '.join(bad[:5])}"
        )
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={METADATA_KEY: meta.to_json()}))
    return Path(path)


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """Read only the metadata of a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors checkpoint ({e})") from e
    if METADATA_KEY not in header:
        raise CheckpointError(f"{str(path)!r} is a safetensors file without mnv2 metadata; use `mnv2 convert` on it")
    try:
        return CheckpointMeta.from_json(header[METADATA_KEY])
    except CheckpointError as e:
        raise CheckpointError(f"{str(path)!r}: {e}") from e


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a checkpoint file alone (the task's architecture, from the file's ``task``); returns it in
    eval mode with ``model.meta`` set.

    The model's forward takes a preprocessed NCHW float batch (see ``model.meta.preprocessing``).
    """
    meta = read_checkpoint_meta(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({e})") from e
    try:
        task = get_task(meta.task)
    except ConfigError as e:
        raise CheckpointError(f"{str(path)!r}: {e}") from e
    try:
        model = task.from_meta(meta)
    except ConfigError as e:  # the task's own check of what the metadata describes
        raise CheckpointError(f"{str(path)!r} {e}") from e
    except Mnv2Error:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{str(path)!r}: its metadata does not describe a buildable model ({e})") from e
    own = model.state_dict()
    wrong = [
        f"{k} ({v.dtype})"
        for k, v in state.items()
        if k in own and own[k].is_floating_point() and not v.is_floating_point()
    ]
    if wrong:
        raise CheckpointError(f"{str(path)!r} holds non-floating weights where floats belong: {', '.join(wrong[:5])}")
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(f"{str(path)!r} holds NaN or inf in {len(bad)} tensor(s), e.g. {', '.join(bad[:5])}")
    load_state_dict_checked(model, state, source=str(path))  # fp16-stored weights are copied into fp32 parameters
    model.meta = meta
    return model.to(device).eval()


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``, naming every missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s), e.g. {', '.join(unexpected[:5])}")
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:5])}")
        raise CheckpointError(f"weights from {source} do not fit the architecture: " + " | ".join(parts))
    model.load_state_dict(state)
