"""Which optional extra brings which package, so a verb run without its packages says in one line what to install
(``mnv2[runtime]`` runs exported files without torch; ``mnv2[train]`` brings torch and the training stack)."""

from __future__ import annotations

import importlib.util

from mnv2.errors import ConfigError

TRAIN_EXTRA = "mnv2[train]"
# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    **dict.fromkeys(("torch", "safetensors", "yaml", "kornia", "matplotlib", "pycocotools"), "train"),
    **dict.fromkeys(("onnxruntime", "ai_edge_litert"), "runtime"),
    **dict.fromkeys(("starlette", "uvicorn", "multipart", "python_multipart", "prometheus_client"), "serve"),
    **dict.fromkeys(("onnx", "onnxscript", "openvino"), "deploy"),
    **dict.fromkeys(("litert_torch", "executorch"), "formats"),
    "h5py": "interop",
}


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def require_torch(what: str, hint: str = "") -> None:
    """``ConfigError`` (exit 2) naming the extra to install when torch is missing (``hint``: what else to do)."""
    if not has_torch():
        raise ConfigError(
            f"{what} needs PyTorch, which this install does not have: pip install '{TRAIN_EXTRA}'"
            + (f"; {hint}" if hint else "")
        )


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The one-line advice for a missing optional package (``None`` when the module is not one of an extra's)."""
    top = (error.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return f"this needs the Python package {top!r}, which this install does not have: pip install 'mnv2[{extra}]'"
