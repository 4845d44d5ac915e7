"""``mnv2 serve``: an HTTP API and a web page for any mnv2 model (``mnv2.serve.app``).

The app's names load on first use, so importing :mod:`mnv2.serve.settings` (the CLI's flag defaults) stays light.
"""

from typing import Any

from mnv2.serve.settings import API_KEY_ENV, ServeSettings

__all__ = ["API_KEY_ENV", "ServeSettings", "ServedModel", "create_app", "model_name", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("ServedModel", "create_app", "model_name", "serve"):
        from mnv2.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'mnv2.serve' has no attribute {name!r}")
