"""A server's limits, light to import: ``mnv2 serve``'s flags take their defaults from :class:`ServeSettings` without
loading the app (torch, the engines)."""

from __future__ import annotations

from dataclasses import dataclass

from mnv2.errors import ConfigError

API_KEY_ENV = "MNV2_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """Limits of a server. ``max_wait_ms``: how long a batch waits for more requests once it has one.

    ``decode_threads``: threads that decode and preprocess uploads. One keeps up with a 2-core CPU's engine (2 ms
    an image against 7) and, unlike a thread per request, leaves the engine's lanes their cores and caches: 96
    against 91 img/s at concurrency 32 (BENCHMARKS.md, issue 17). Raise it where cores outnumber the engine's.
    """

    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 64
    max_body_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    api_key: str | None = None
    retry_after_s: int = 1
    decode_threads: int = 1
    body_timeout_s: float = 30.0  # a body must be complete this long after its request began (408 otherwise)
    max_bodies_bytes: int = 256 * 2**20  # bytes of bodies held at once, over all requests (503 above)

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
