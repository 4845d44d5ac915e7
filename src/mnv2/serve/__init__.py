"""``mnv2 serve``: an HTTP API and a web page for any mnv2 model (``mnv2.serve.app``)."""

from mnv2.serve.app import API_KEY_ENV, ServedModel, ServeSettings, create_app, model_name, serve

__all__ = ["API_KEY_ENV", "ServeSettings", "ServedModel", "create_app", "model_name", "serve"]
