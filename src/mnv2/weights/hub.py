"""Published MobileNetV2 weights by name: download once (with progress), verify, convert once, reuse.

``mnv2.create_model("mobilenetv2_100", weights="tv_in1k")`` fetches torchvision's file into the cache, checks its
integrity, converts it to an mnv2 checkpoint in the cache and loads that; later calls load the cached conversion.

Integrity, honestly: mnv2 has computed no checksum of any published file (this project has no access to the hubs),
so ``RemoteFile.sha256`` is ``None`` for all of them. Where a publisher put a hash *prefix* in the file name
(torchvision, timm: torch.hub's ``-<first 8 hex of sha256>`` convention) it is checked. Otherwise the first
download's SHA-256 is recorded beside the file (trust on first use) and every later use is checked against it.

The cache is mnv2's one cache directory (``$MNV2_CACHE``, else ``$XDG_CACHE_HOME/mnv2``, else ``~/.cache/mnv2``).
``$MNV2_WEIGHTS_MIRROR`` (or ``mirror=``) fetches ``{mirror}/{host}/{path}`` instead of each URL, e.g. for an
internal mirror or a test server.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mnv2.data.download import download
from mnv2.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mnv2.errors import ConfigError
from mnv2.files import cache_dir, sha256_file
from mnv2.models import registry
from mnv2.models.mobilenetv2 import MobileNetV2
from mnv2.weights.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint
from mnv2.weights.convert import convert_source
from mnv2.weights.convert.common import ConvertError

MIRROR_ENV = "MNV2_WEIGHTS_MIRROR"
# Options that change no weight's shape, so they combine with published weights.
SHAPE_PRESERVING = {"output_stride", "dropout", "output"}


@dataclass(frozen=True)
class RemoteFile:
    """One published file. ``sha256``: a full hash mnv2 computed (none yet); ``sha256_prefix``: the publisher's."""

    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name


@dataclass(frozen=True)
class PretrainedWeights:
    """A published set of MobileNetV2 weights and what is known about it (paper.md §5–6)."""

    model: str  # registered architecture name (width)
    tag: str
    framework: str  # keras / torchvision / timm / huggingface
    files: tuple[RemoteFile, ...]
    resolution: int
    num_classes: int
    metrics: dict[str, Any] = field(default_factory=dict)
    preprocessing: Preprocessing | None = None  # overrides the converter's default for this source
    notes: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"


_PRETRAINED: dict[str, PretrainedWeights] = {}


def register_pretrained(entry: PretrainedWeights) -> PretrainedWeights:
    """Add an entry (e.g. an organisation's own published weights)."""
    registry.model_info(entry.model)  # the architecture must exist
    _PRETRAINED[entry.name] = entry
    return entry


# --- The published weights -----------------------------------------------------------------------------------------

# TF-slim README (SLIM-R, paper.md §5): (width, resolution) -> (top-1, top-5) of the TF-slim checkpoints.
TF_SLIM_ACCURACY = {
    (1.4, 224): (75.0, 92.5), (1.3, 224): (74.4, 92.1),
    (1.0, 224): (71.8, 91.0), (1.0, 192): (70.7, 90.1), (1.0, 160): (68.8, 89.0), (1.0, 128): (65.3, 86.9),
    (1.0, 96): (60.3, 83.2), (0.75, 224): (69.8, 89.6), (0.75, 192): (68.7, 88.9), (0.75, 160): (66.4, 87.3),
    (0.75, 128): (63.2, 85.3), (0.75, 96): (58.8, 81.6), (0.5, 224): (65.4, 86.4), (0.5, 192): (63.9, 85.4),
    (0.5, 160): (61.0, 83.2), (0.5, 128): (57.7, 80.8), (0.5, 96): (51.2, 75.8), (0.35, 224): (60.3, 82.9),
    (0.35, 192): (58.2, 81.2), (0.35, 160): (55.7, 79.1), (0.35, 128): (50.8, 75.0), (0.35, 96): (45.5, 70.4),
}  # fmt: skip
KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"  # keras mobilenet_v2.py
KERAS_IO_ACCURACY = {(1.0, 224): (71.3, 90.1)}  # keras.io applications table lists only the default model


def _model_name(width: float) -> str:
    return f"mobilenetv2_{round(width * 100):03d}"


def _register_published() -> None:
    for (width, res), (top1, top5) in TF_SLIM_ACCURACY.items():
        name = _model_name(width)
        for top in (True, False):
            filename = (
                f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(width)}_{res}{'' if top else '_no_top'}.h5"
            )
            metrics = {"tf_slim_top1": top1, "tf_slim_top5": top5, "source": "TF-slim README (same width/resolution)"}
            if (width, res) in KERAS_IO_ACCURACY:
                metrics.update(dict(zip(("top1", "top5"), KERAS_IO_ACCURACY[(width, res)])), source="keras.io")
            register_pretrained(
                PretrainedWeights(
                    name, f"keras_in1k_r{res}{'' if top else '_notop'}", "keras",
                    (RemoteFile(KERAS_BASE_URL + filename),), res, 1000 if top else 0, metrics,
                    notes="keras.applications.MobileNetV2 weights; TF padding, BN eps 1e-3, inputs in [-1, 1]"
                    + ("; softmax output as keras.applications" if top else "; no classifier"),
                )
            )  # fmt: skip
    # torchvision (TV-doc; paper.md §6): the file name carries the first 8 hex digits of the SHA-256.
    tv = "https://download.pytorch.org/models/"
    for tag, file, prefix, resize, (top1, top5) in (
        ("tv_in1k", "mobilenet_v2-b0353104.pth", "b0353104", 256, (71.878, 90.286)),
        ("tv2_in1k", "mobilenet_v2-7ebf99e0.pth", "7ebf99e0", 232, (72.154, 90.822)),
    ):
        pre = Preprocessing(224, 224 / resize, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
        metrics = {"top1": top1, "top5": top5, "source": "torchvision docs"}
        register_pretrained(
            PretrainedWeights(
                "mobilenetv2_100", tag, "torchvision", (RemoteFile(tv + file, sha256_prefix=prefix),), 224, 1000,
                metrics, pre, notes=f"torchvision IMAGENET1K_{'V1' if tag == 'tv_in1k' else 'V2'}",
            )
        )  # fmt: skip
    # timm (pretrained_cfg urls; results-imagenet.csv, paper.md §6). 110d/120d add blocks beyond Table 2: not listed.
    timm_url = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
    for model, tag, file, prefix, (top1, top5) in (
        ("mobilenetv2_050", "lamb_in1k", "mobilenetv2_050-3d30d450.pth", "3d30d450", (65.928, 86.114)),
        ("mobilenetv2_100", "ra_in1k", "mobilenetv2_100_ra-b33bc2c4.pth", "b33bc2c4", (72.910, 91.000)),
        ("mobilenetv2_140", "ra_in1k", "mobilenetv2_140_ra-21a4e913.pth", "21a4e913", (76.528, 93.008)),
    ):
        register_pretrained(
            PretrainedWeights(
                model, tag, "timm", (RemoteFile(timm_url + file, sha256_prefix=prefix),), 224, 1000,
                {"top1": top1, "top5": top5, "source": "timm results-imagenet.csv"},
                notes=f"timm {model}.{tag} (bicubic, crop 0.875)",
            )
        )  # fmt: skip
    # Hugging Face ports of the TF-slim checkpoints (1001 classes, index 0 = background; tf_padding=True).
    for width, res in ((1.4, 224), (1.0, 224), (0.75, 160), (0.35, 96)):
        repo = f"https://huggingface.co/google/mobilenet_v2_{width}_{res}/resolve/main/"
        top1, top5 = TF_SLIM_ACCURACY[(width, res)]
        files = tuple(RemoteFile(repo + f) for f in ("config.json", "preprocessor_config.json", "pytorch_model.bin"))
        register_pretrained(
            PretrainedWeights(
                _model_name(width), f"hf_in1k_r{res}", "huggingface", files, res, 1001,
                {"top1": top1, "top5": top5, "source": "TF-slim README (HF ports those checkpoints)"},
                notes=f"google/mobilenet_v2_{width}_{res}; the hub file list is assumed (not checked from here)",
            )
        )  # fmt: skip


_register_published()


def list_pretrained(model: str | None = None) -> list[str]:
    """``model.tag`` names of the registered weights (all, or one architecture's)."""
    return sorted(n for n, e in _PRETRAINED.items() if model is None or e.model == model)


def get_pretrained(name: str, tag: str | None = None) -> PretrainedWeights:
    """Look up ``"mobilenetv2_100.tv_in1k"`` or ``("mobilenetv2_100", "tv_in1k")``."""
    key = f"{name}.{tag}" if tag else name
    if key not in _PRETRAINED:
        model = name.split(".")[0]
        tags = [n.split(".", 1)[1] for n in list_pretrained(model)]
        hint = f"tags for {model}: {', '.join(tags)}" if tags else f"known: {', '.join(list_pretrained())}"
        raise ConfigError(f"no published weights named {key!r}; {hint}")
    return _PRETRAINED[key]


# --- Download, verify, convert, cache ---------------------------------------------------------------------------


def cache_root(override: str | Path | None = None) -> Path:
    """The cache directory: ``override``, else mnv2's cache (:func:`mnv2.files.cache_dir`)."""
    return Path(override) if override else cache_dir()


def _resolve_url(url: str, mirror: str | None) -> str:
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    u = urllib.parse.urlparse(url)
    return f"{mirror.rstrip('/')}/{u.netloc}{u.path}"


def fetch(file: RemoteFile, directory: Path, *, mirror: str | None = None, progress: bool = True) -> tuple[Path, str]:
    """The verified local copy of ``file`` (downloaded if absent) and how it was verified."""
    path = directory / file.filename
    record = path.with_name(path.name + ".sha256")  # trust-on-first-use record
    if not path.is_file():
        download(_resolve_url(file.url, mirror), path, progress=progress)
        record.unlink(missing_ok=True)
    digest = sha256_file(path)
    if file.sha256 and digest != file.sha256:
        path.unlink()
        raise ConvertError(f"{file.url}: SHA-256 {digest} differs from the published {file.sha256}; file removed")
    if file.sha256_prefix and not digest.startswith(file.sha256_prefix):
        path.unlink()
        raise ConvertError(
            f"{file.url}: SHA-256 {digest[:16]}... does not start with the publisher's {file.sha256_prefix}; "
            "file removed"
        )
    if record.is_file():
        first = record.read_text().strip()
        if first != digest:
            raise ConvertError(
                f"{path} changed since its first download (SHA-256 {first} then, {digest} now); delete it to "
                "download again"
            )
    else:
        record.write_text(digest + "\n")
    status = "sha256" if file.sha256 else "sha256-prefix" if file.sha256_prefix else "trust-on-first-use"
    return path, status


def load_pretrained(
    entry: PretrainedWeights,
    *,
    cache: str | Path | None = None,
    mirror: str | None = None,
    progress: bool = True,
) -> nn.Module:
    """Download, verify and convert ``entry`` once (cached), and return the eval-mode model with ``.meta``."""
    root = cache_root(cache)
    directory = root / "downloads" / entry.framework / entry.name
    paths, status = [], set()
    for file in entry.files:
        path, how = fetch(file, directory, mirror=mirror, progress=progress)
        paths.append(path)
        status.add(how)
    weights = paths[-1]
    digest = sha256_file(weights)
    converted_path = root / "converted" / f"{entry.name}.safetensors"
    if converted_path.is_file():
        try:
            if read_checkpoint_meta(converted_path).source.get("sha256") == digest:
                return load_checkpoint(converted_path)
        except CheckpointError:
            pass  # a damaged conversion is redone below
    source = directory if entry.framework == "huggingface" else weights
    converted = convert_source(source, format=entry.framework)
    model, meta = converted.model, converted.meta
    expected = registry.model_info(entry.model).width_mult
    if model.config.width_mult != expected or model.config.num_classes != entry.num_classes:
        raise ConvertError(
            f"{entry.name}: the downloaded weights are width {model.config.width_mult} with "
            f"{model.config.num_classes} classes; the registry expects width {expected}, {entry.num_classes} classes"
        )
    if entry.preprocessing is not None:
        meta.preprocessing = entry.preprocessing
    else:
        meta.preprocessing = Preprocessing(**{**meta.preprocessing.to_dict(), "input_size": entry.resolution})
    meta.metrics = dict(entry.metrics)
    meta.source = {**meta.source, "sha256": digest, "pretrained": entry.name, "url": entry.files[-1].url}
    meta.source["integrity"] = "/".join(sorted(status))
    save_checkpoint(converted_path, model, meta)
    return load_checkpoint(converted_path)


def create_model(
    name: str,
    *,
    weights: str | None = None,
    num_classes: int | None = None,
    cache_dir: str | Path | None = None,
    mirror: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> nn.Module:
    """:func:`mnv2.models.create_model`, plus ``weights=TAG`` for published weights (see :func:`list_pretrained`).

    With weights, the architecture comes from them. Options that keep every weight's shape still apply:
    ``num_classes`` (a fresh classifier for fine-tuning), ``output_stride`` (dilation, §6.3), ``dropout``,
    ``output``, and ``features_only`` / ``out_indices`` (a backbone); others (width, padding, ...) are refused.

    Example:
        >>> model = mnv2.create_model("mobilenetv2_100", weights="tv_in1k")  # doctest: +SKIP
        >>> backbone = mnv2.create_model("mobilenetv2_100", weights="tv_in1k", features_only=True)  # doctest: +SKIP
    """
    if weights is None:
        return registry.create_model(name, num_classes=num_classes, **overrides)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    features_only = overrides.pop("features_only", False)
    out_indices = overrides.pop("out_indices", None)
    refused = sorted(set(overrides) - SHAPE_PRESERVING)
    if refused:
        raise ConfigError(f"with weights={weights!r} the architecture is fixed; cannot override {refused}")
    model = load_pretrained(get_pretrained(name, weights), cache=cache_dir, mirror=mirror, progress=progress)
    meta, state = model.meta, model.state_dict()
    if num_classes is not None and num_classes != model.config.num_classes:
        overrides["num_classes"] = num_classes
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        meta.class_names = None
    if not overrides and not features_only:
        return model
    config = dataclasses.replace(model.config, **overrides)
    meta.model_config = config
    if features_only:
        new = registry.mobilenet_v2(features_only=True, out_indices=out_indices, **config.to_dict())
        own = new.state_dict()
        new.load_state_dict({k: v for k, v in state.items() if k in own})
    else:
        new = MobileNetV2(config)
        missing, _ = new.load_state_dict(state, strict=False)
        assert all(k.startswith("classifier.") for k in missing)  # only a re-sized classifier starts fresh
    new.meta = meta
    return new.eval()


def describe(entry: PretrainedWeights) -> dict[str, Any]:
    """A JSON-friendly summary of an entry (for ``mnv2 models --pretrained --json``)."""
    return {
        "name": entry.name,
        "framework": entry.framework,
        "resolution": entry.resolution,
        "num_classes": entry.num_classes,
        "metrics": entry.metrics,
        "urls": [f.url for f in entry.files],
        "sha256": [f.sha256 or (f"prefix {f.sha256_prefix}" if f.sha256_prefix else "unknown") for f in entry.files],
        "notes": entry.notes,
    }


__all__ = [
    "PretrainedWeights",
    "RemoteFile",
    "create_model",
    "describe",
    "get_pretrained",
    "list_pretrained",
    "load_pretrained",
    "register_pretrained",
]
