"""``mnv2 serve``: an HTTP API and a web page for models of any task; the limits' flags are ``ServeSettings``'s
fields."""

from __future__ import annotations

import argparse

from mnv2.cli.common import port, positive
from mnv2.cli.flags import add_flags, values_from_args
from mnv2.errors import ConfigError


def add_parser(sub, verb: str | None) -> None:
    from mnv2.serve.settings import ServeSettings  # light: the defaults live there, once

    p = sub.add_parser("serve", help="an HTTP API and a web page for checkpoints or exported files of any task")
    p.add_argument("models", nargs="+", help="checkpoints (.safetensors) or exported .onnx/.tflite files")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; other than loopback needs an API key")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--engine", default="auto", help="auto (the fastest installed) or onnxruntime, openvino, litert, "
                   "torch")  # fmt: skip
    p.add_argument("--threads", type=positive, default=None, help="inference threads per model (default: all)")
    add_flags(p, ServeSettings)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import logging
    import os
    from pathlib import Path

    missing = [m for m in ("starlette", "uvicorn", "multipart", "prometheus_client") if not importlib.util.find_spec(m)]
    if missing:
        raise ConfigError(f"mnv2 serve needs {', '.join(missing)}: pip install 'mnv2[serve]'")
    from mnv2.deploy.runtime.engines import check_engine
    from mnv2.serve import API_KEY_ENV, ServeSettings, serve

    given = values_from_args(ServeSettings, args)
    settings = ServeSettings.with_limits(**{"api_key": os.environ.get(API_KEY_ENV) or None, **given})
    check_engine(args.engine)  # before any model loads
    missing = [m for m in args.models if not Path(m).exists()]
    if missing:
        raise ConfigError(f"model file {missing[0]!r} does not exist")
    _check_port(args.host, args.port)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    serve(args.models, args.host, args.port, settings, engine=args.engine, threads=args.threads)
    return 0


def _check_port(host: str, port: int) -> None:
    """A clear error for a port in use (uvicorn would log it and exit 1 after loading every model)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None
