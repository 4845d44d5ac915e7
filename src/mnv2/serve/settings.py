"""A server's limits, light to import: ``mnv2 serve``'s flags take their defaults from :class:`ServeSettings` without
loading the app (torch, the engines)."""

from __future__ import annotations

from dataclasses import dataclass

from mnv2.errors import ConfigError
from mnv2.typed import option

API_KEY_ENV = "MNV2_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """Limits of a server. ``max_wait_ms``: how long a batch waits for more requests once it has one.

    ``decode_threads``: threads that decode and preprocess uploads. One keeps up with a 2-core CPU's engine (2 ms
    an image against 7) and, unlike a thread per request, leaves the engine's lanes their cores and caches: 96
    against 91 img/s at concurrency 32 (BENCHMARKS.md, issue 17). Raise it where cores outnumber the engine's.
    """

    max_batch: int = option(32, "most images per forward pass", low=1)
    max_wait_ms: float = option(2.0, "how long a batch waits for more requests on their way", low=0, unit="ms")
    max_queue: int = option(64, "requests waiting per model; more get 503", low=1)
    max_body_bytes: int = option(10 * 2**20, "largest request body (413 above)", above=0, unit="MiB", scale=2**20,
                                 flag="--max-body-mb", metavar="MB")  # fmt: skip
    max_pixels: int = option(40_000_000, "largest image, from its header (413 above)", above=0, unit="megapixels",
                             scale=1e6, flag="--max-megapixels", metavar="MEGAPIXELS")  # fmt: skip
    api_key: str | None = option(None, f"bearer token required on /v1 and /metrics (or {API_KEY_ENV})")
    retry_after_s: int = 1
    decode_threads: int = option(1, "threads decoding and preprocessing uploads", low=1)
    # a body must be complete this long after its request began (408 otherwise)
    body_timeout_s: float = option(30.0, "seconds a request's body may take to arrive (408 after)", above=0, unit="s")
    max_bodies_bytes: int = 256 * 2**20  # bytes of bodies held at once, over all requests (503 above)

    @classmethod
    def with_limits(cls, **given) -> ServeSettings:
        """Settings from ``given`` fields, the bodies held at once raised to hold one body of ``max_body_bytes``."""
        bodies = max(cls.max_bodies_bytes, given.get("max_body_bytes", 0))
        return cls(**{"max_bodies_bytes": bodies, **given})

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_pixels", "decode_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0; got {self.max_wait_ms}")
        if not 0 < self.body_timeout_s < float("inf"):
            raise ConfigError(f"body_timeout_s must be a finite number > 0; got {self.body_timeout_s}")
        if self.max_bodies_bytes < self.max_body_bytes:
            raise ConfigError(f"max_bodies_bytes ({self.max_bodies_bytes}) must hold at least one body of "
                              f"max_body_bytes ({self.max_body_bytes})")  # fmt: skip
