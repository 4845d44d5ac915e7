"""`mnv2 serve`: any mnv2 checkpoint or exported file behind a small HTTP API and a web page (Starlette + uvicorn).

Endpoints (JSON unless said otherwise):

- ``POST /v1/models/{name}:predict``: one image, as a multipart upload (field ``image``) or the raw body
  (``image/*`` or ``application/octet-stream``). Query: ``topk`` (classification), ``min_score`` (detection).
  The answer is the task's own (``mnv2.tasks``: ``results``): top-k classes; COCO-style boxes; class fractions and
  the mask as a base64 palette PNG (pixel values are class indices, the palette the class colours).
- ``GET /v1/models``: each model's name, task, classes, input size, preprocessing and engine.
- ``GET /healthz``; ``GET /metrics`` (Prometheus text: requests, errors, latency, batch sizes, queue depth).
- ``GET /``: the web page (``static/index.html``).

Safety: bodies over ``max_body_bytes`` are refused (413) from their ``Content-Length`` or while they stream in;
images over ``max_pixels`` are refused from their header, before decoding (413); undecodable data is a 400; other
content types 415; unknown models 404; a full queue 503 with ``Retry-After``. With an API key, ``/v1/*`` and
``/metrics`` need ``Authorization: Bearer KEY`` (compared in constant time). Errors are ``{"error": message}``;
an unexpected one is logged with its traceback and answered 500 without it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hmac
import io
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mnv2.data.images import ImageError, ImageTooLarge, decode_image
from mnv2.deploy.runtime.predict import Predictor
from mnv2.errors import ConfigError
from mnv2.serve.batcher import Job, MicroBatcher, QueueFull
from mnv2.serve.settings import API_KEY_ENV, ServeSettings

log = logging.getLogger("mnv2.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
IMAGE_FIELD = "image"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def model_name(path: str | Path) -> str:
    """A model's name in the URL: its file name without the extension (``raccoon_ssdlite_mnv2``)."""
    return Path(path).name.split(".")[0]


CLIENT_CLOSED = 499  # nginx's "client closed request": counted in /metrics, never answered
MODEL_SUFFIXES = (".safetensors", ".onnx", ".tflite")


def model_files(paths: list[str]) -> list[Path]:
    """The model files among ``paths`` (a directory gives the ones in it), so ``mnv2 serve examples/models/*`` skips
    the model card and sidecar files; the others are named in a log line."""
    found, skipped = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix in MODEL_SUFFIXES)
        elif p.suffix in MODEL_SUFFIXES or not p.exists():  # a missing file fails with its own message
            found.append(p)
        else:
            skipped.append(p.name)
    if skipped:
        log.info("not model files, skipped: %s", ", ".join(skipped))
    if not found:
        raise ConfigError(f"no model file among {', '.join(paths) or 'the arguments'} (a checkpoint .safetensors, or "
                          "an exported .onnx/.tflite)")  # fmt: skip
    return found


class ServedModel:
    """One loaded model: the predict driver's :class:`~mnv2.deploy.runtime.predict.Predictor` (its task's inference
    half, its card as the engine answers, a warm engine), shared with ``mnv2 predict``."""

    def __init__(self, path: str | Path, engine: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        self.name = model_name(path)
        self.predictor = Predictor.open(path, engine, None, threads)
        self.inference, self.info, self.engine = self.predictor.inference, self.predictor.info, self.predictor.engine
        self._palette: np.ndarray | None = None

    def decode(self, data: bytes, max_pixels: int):
        """``(image, input array)`` of an uploaded image (``ImageError``/``ImageTooLarge`` when it cannot be)."""
        image = decode_image(data, max_pixels)
        return image, self.predictor.prepare(image)

    def infer(self, jobs: list[Job]):
        """The engine's outputs for a batch of prepared inputs of one shape (the batcher's inference thread)."""
        return self.predictor.run([j.tensor for j in jobs])

    def finish(self, jobs: list[Job], out) -> list[dict]:
        """Each job's answer from the batch's outputs (the batcher's post-processing thread)."""
        results: list[dict] = [{}] * len(jobs)
        groups: dict[tuple, list[int]] = {}  # requests with the same options (topk, min_score) share one call
        for i, job in enumerate(jobs):
            groups.setdefault(tuple(sorted(job.options.items())), []).append(i)
        for options, idx in groups.items():
            rows = tuple(o[idx] for o in out) if isinstance(out, tuple) else out[idx]
            for i, r in zip(idx, self.predictor.results(rows, [jobs[i].image for i in idx], **dict(options))):
                results[i] = r
        return results

    def encode(self, result: dict) -> dict:
        """JSON-ready: a ``mask`` array becomes a base64 PNG whose palette holds the class colours."""
        if "mask" not in result:
            return result
        from PIL import Image

        im = Image.fromarray(result["mask"], mode="L").convert("P")
        im.putpalette(self.palette().ravel().tolist())
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return {**self.inference.to_json(result), "mask_png": base64.b64encode(buf.getvalue()).decode()}

    def classes(self) -> list[str]:
        names = self.info["class_names"]
        return [str(i) for i in range(names)] if isinstance(names, int) else list(names)

    def palette(self) -> np.ndarray:
        if self._palette is None:
            self._palette = self.inference.palette(self.info)
        return self._palette

    def describe(self) -> dict[str, Any]:
        pre = self.info["preprocessing"]
        d = {
            "name": self.name,
            "task": self.inference.name,
            "classes": self.classes(),
            "input_size": pre.input_size if self.inference.fixed_size else None,  # segmentation: any size
            "preprocessing": pre.to_dict(),
            "engine": self.engine.name,
            "precision": self.engine.precision,
            "file": self.path.name,
        }
        if self.inference.palette is not None:
            d["class_colors"] = self.palette().tolist()
        return d


def _options(request) -> dict:
    """The task options a request may set: ``topk`` (classification), ``min_score`` (detection)."""
    q = request.query_params
    opts: dict[str, Any] = {}
    try:
        if "topk" in q:
            opts["topk"] = int(q["topk"])
            if not 1 <= opts["topk"] <= 1000:
                raise ValueError
        if "min_score" in q:
            opts["min_score"] = float(q["min_score"])
            if not 0 <= opts["min_score"] <= 1:
                raise ValueError
    except ValueError:
        raise HTTPError(400, "topk must be an integer in [1, 1000] and min_score a number in [0, 1]") from None
    return opts


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class _BodyBudget(Exception):
    pass


class LimitBody:
    """ASGI middleware guarding how a body arrives (issue 28, 2: 150 clients dribbling a byte every 5 s locked
    everyone out, ``/healthz`` included):

    - a body that streams in over ``limit`` bytes raises :class:`_BodyTooLarge` (413) in the handler reading it;
    - a body not complete ``deadline_s`` after its request started raises :class:`_BodyTooSlow` (408), so a slow
      client holds nothing for long;
    - the bytes of bodies being received, over all requests, stay within ``budget`` (:class:`_BodyBudget`, 503):
      what bounds memory, where uvicorn's connection cap used to turn away every client, healthy ones too, while
      slow ones held its slots. Requests without a body (``/healthz``, ``/metrics``) are never held up.
    """

    def __init__(self, app, limit: int, deadline_s: float, budget: int) -> None:
        self.app, self.limit, self.deadline_s, self.budget = app, limit, deadline_s, budget
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = added = 0
        deadline = asyncio.get_running_loop().time() + self.deadline_s

        async def limited():
            nonlocal seen, added
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except asyncio.TimeoutError:
                raise _BodyTooSlow from None
            if message["type"] == "http.request":
                chunk = len(message.get("body", b""))
                seen += chunk
                if seen > self.limit:
                    raise _BodyTooLarge
                if self.in_flight + chunk > self.budget:
                    raise _BodyBudget
                self.in_flight += chunk
                added += chunk
            return message

        try:
            return await self.app(scope, limited, send)
        finally:
            self.in_flight -= added


def create_app(models: list[ServedModel], settings: ServeSettings | None = None):
    """The ASGI app serving ``models`` (names must differ)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from starlette.applications import Starlette
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    settings = settings or ServeSettings()
    by_name: dict[str, ServedModel] = {}
    for m in models:
        if m.name in by_name:
            raise ConfigError(f"two models are named {m.name!r} ({by_name[m.name].path} and {m.path}); rename one file")
        by_name[m.name] = m

    registry = CollectorRegistry()
    requests = Counter("mnv2_requests", "predict requests", ["model", "status"], registry=registry)
    errors = Counter("mnv2_errors", "requests answered with an error status", ["status"], registry=registry)
    latency = Histogram("mnv2_request_latency_seconds", "predict latency, receipt to answer", ["model"],
                        buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
    batch_size = Histogram("mnv2_batch_size", "images per forward pass", ["model"], buckets=BATCH_BUCKETS,
                           registry=registry)  # fmt: skip
    queue_depth = Gauge("mnv2_queue_depth", "inputs waiting for a batch", ["model"], registry=registry)
    batchers = {
        name: MicroBatcher(
            m.infer,
            finish=m.finish,
            max_batch=settings.max_batch,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=batch_size.labels(name).observe,
            on_depth=queue_depth.labels(name).set,
        )
        for name, m in by_name.items()
    }
    decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="mnv2-decode")
    page = resources.files("mnv2.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    def error(status: int, message: str, headers: dict | None = None) -> Response:
        errors.labels(str(status)).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorised(request) -> bool:
        if settings.api_key is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.api_key.encode())

    def guard(handler):
        async def wrapped(request):
            if not authorised(request):
                return error(
                    401, "missing or wrong API key (Authorization: Bearer KEY)", {"WWW-Authenticate": "Bearer"}
                )
            try:
                return await handler(request)
            except HTTPError as e:
                return error(e.status, e.message, e.headers)
            except _BodyTooLarge:
                return error(413, f"the body is over the {settings.max_body_bytes:,}-byte limit")
            except _BodyTooSlow:
                return error(408, f"the body did not arrive within {settings.body_timeout_s:g} s")
            except _BodyBudget:
                return error(503, "the server is receiving too much at once; retry",
                             {"Retry-After": str(settings.retry_after_s)})  # fmt: skip
            except ClientDisconnect:
                log.info("client disconnected during %s", request.url.path)
                return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the metrics count it as 499
            except Exception:
                log.exception("unexpected error on %s", request.url.path)
                return error(500, "internal error; the server log has the details")

        return wrapped

    async def read_image(request) -> bytes:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            if "boundary=" not in request.headers.get("content-type", ""):
                raise HTTPError(400, "malformed multipart body (its content type names no boundary)")
            try:
                form = await request.form(max_files=1, max_fields=16, max_part_size=settings.max_body_bytes)
            except (MultiPartException, StarletteHTTPException) as e:  # Starlette 1.x wraps the parser's errors
                detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
                raise HTTPError(400, f"malformed multipart body ({detail})") from None
            except (_BodyTooLarge, _BodyTooSlow, _BodyBudget, ClientDisconnect):
                raise
            except Exception as e:  # python-multipart's own parse errors (a 200 kB part header, a bad boundary)
                raise HTTPError(400, f"malformed multipart body ({type(e).__name__}: {str(e)[:120]})") from None
            upload = form.get(IMAGE_FIELD)
            if not isinstance(upload, UploadFile):
                upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
            if upload is None:
                raise HTTPError(400, f"the multipart body has no file (send it as the field {IMAGE_FIELD!r})")
            return await upload.read()
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            return await request.body()
        raise HTTPError(
            415, f"content type {ctype or 'none'!r}: send an image as multipart/form-data, image/* or "
            "application/octet-stream"
        )  # fmt: skip

    async def predict(request):
        name = request.path_params["name"]
        model = by_name.get(name)
        if model is None:
            raise HTTPError(404, f"no model named {name!r}; GET /v1/models lists them")
        start = time.perf_counter()
        status = 500
        try:
            batcher = batchers[name]
            if batcher.full():
                raise HTTPError(503, "the server is busy; retry", {"Retry-After": str(settings.retry_after_s)})
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
                raise HTTPError(413, f"the body is over the {settings.max_body_bytes:,}-byte limit")
            options = _options(request)
            with batcher.expecting():  # a batch being formed may wait for this one
                data = await read_image(request)
                if not data:
                    raise HTTPError(400, "the body holds no image")
                try:  # one hop to a decoding thread: decoding and preprocessing release the event loop
                    loop = asyncio.get_running_loop()
                    image, tensor = await loop.run_in_executor(decode_pool, model.decode, data, settings.max_pixels)
                except ImageTooLarge as e:
                    raise HTTPError(413, str(e)) from None
                except ImageError as e:
                    raise HTTPError(400, str(e)) from None
                try:
                    answer = batcher.enqueue(Job(tensor, image, options))
                except QueueFull:
                    raise HTTPError(
                        503, "the server is busy; retry", {"Retry-After": str(settings.retry_after_s)}
                    ) from None
            try:
                result = await answer
            except ConfigError as e:  # e.g. a topk the model cannot give
                raise HTTPError(400, str(e)) from None
            seconds = time.perf_counter() - start
            status = 200
            body = {"model": name, "task": model.inference.name, **model.encode(result), "latency_ms": 1000 * seconds}
            return JSONResponse(body)
        except HTTPError as e:
            status = e.status
            raise
        except (_BodyTooLarge, _BodyTooSlow, _BodyBudget) as e:  # the client's 413/408, or busy: no server error
            status = {_BodyTooLarge: 413, _BodyTooSlow: 408, _BodyBudget: 503}[type(e)]
            raise
        except ClientDisconnect:  # the client went away mid-request: nginx's 499, no answer, no traceback
            status = CLIENT_CLOSED
            raise
        finally:
            requests.labels(name, str(status)).inc()
            latency.labels(name).observe(time.perf_counter() - start)

    async def list_models(request):
        return JSONResponse({"models": [m.describe() for m in by_name.values()]})

    async def healthz(request):
        return JSONResponse({"status": "ok", "models": list(by_name)})

    async def metrics(request):
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def index(request):
        return HTMLResponse(page)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():  # uvicorn runs this after the requests in flight are answered
            await b.stop()
        decode_pool.shutdown(wait=True)

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/metrics", guard(metrics)),
        Route("/v1/models", guard(list_models)),
        Route("/v1/models/{name}:predict", guard(predict), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(LimitBody, limit=settings.max_body_bytes, deadline_s=settings.body_timeout_s,
                                           budget=settings.max_bodies_bytes)])  # fmt: skip
    app.state.models, app.state.batchers, app.state.settings = by_name, batchers, settings
    return app


def serve(
    paths: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    engine: str = "auto",
    threads: int | None = None,
    log_level: str = "info",
) -> None:
    """Load ``paths`` and serve them until SIGINT/SIGTERM (requests in flight are answered first)."""
    import uvicorn

    settings = settings or ServeSettings()
    if host not in LOOPBACK and not settings.api_key:
        raise ConfigError(
            f"binding {host} (not loopback) needs an API key: pass --api-key or set {API_KEY_ENV}"
        )  # fmt: skip
    models = []
    for p in model_files(paths):
        log.info("loading %s (a checkpoint is converted once for the fastest engine, then cached)", p)
        m = ServedModel(p, engine, threads)
        log.info("loaded %s: %s on %s", m.name, m.inference.name, m.engine.name)
        models.append(m)
    app = create_app(models, settings)
    # The models' objects live as long as the server: out of the collector's sight, a request's garbage collection
    # no longer walks them.
    gc.freeze()
    # Connections beyond the queue and a batch in flight get uvicorn's 503 before any body is read.
    # No connection cap (uvicorn's limit_concurrency answered 503 to everyone, /healthz too, while slow clients held
    # its slots): the body guard (LimitBody) bounds the time and bytes of bodies instead, and the batcher its queue.
    # No proxy-header rewriting (nothing here trusts a client address) and no Server header: less work per request.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=30, access_log=False, proxy_headers=False,
                            server_header=False)  # fmt: skip
    # uvicorn answers the requests in flight on SIGTERM, then raises the signal again under the handler found at
    # start: a no-op one makes that graceful stop exit 0 (as a service manager expects) instead of "killed".
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    log.info("stopped")
