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
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from mnv2.data.preprocessing import Preprocessing
from mnv2.errors import ConfigError, Mnv2Error
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

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["model_config"] = self.model_config.to_dict()
        d["preprocessing"] = self.preprocessing.to_dict()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        d = json.loads(text)
        if d.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format {d['format_version']} is newer than this mnv2 understands")
        d["model_config"] = MobileNetV2Config.from_dict(d["model_config"])
        d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        return strict_from_dict(cls, d, "checkpoint metadata")


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would have
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` (a ``.safetensors`` file), atomically."""
    from mnv2._version import __version__

    model = unwrap(model)
    meta = dataclasses.replace(meta, package_version=__version__)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
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
    return CheckpointMeta.from_json(header[METADATA_KEY])


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
    model = task.from_meta(meta)
    load_state_dict_checked(model, state, source=str(path))
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
