"""Micro-batching: concurrent requests for one model share a forward pass, from a bounded queue.

A request puts its prepared input on the model's queue and awaits the answer. One worker per model takes the first
waiting input, then whatever arrives within ``max_wait`` seconds up to ``max_batch`` inputs, runs them as one batch
(inputs of one shape only: images at other sizes wait for the next batch) on a thread of its own, and answers each
request. The queue holds at most ``max_queue`` inputs: when it is full :meth:`MicroBatcher.submit` raises
:class:`QueueFull` at once (the server answers 503), so memory stays bounded however many clients call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` inputs already."""


@dataclass
class Job:
    """One request's input: ``tensor`` (what the model takes), ``image`` and ``options`` (for the task's results)."""

    tensor: Any
    image: Any
    options: dict
    future: asyncio.Future = field(default=None)  # type: ignore[assignment]


class MicroBatcher:
    """Batches :class:`Job` s for ``run_batch(jobs) -> results`` (called on a worker thread, one batch at a time).

    ``on_batch(size)`` and ``on_depth(depth)`` report batch sizes and the queue depth (metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Job]], list[Any]],
        *,
        max_batch: int = 32,
        max_wait: float = 0.002,
        max_queue: int = 64,
        on_batch: Callable[[int], None] = lambda n: None,
        on_depth: Callable[[int], None] = lambda n: None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait >= 0")
        self.run_batch, self.max_batch, self.max_wait, self.max_queue = run_batch, max_batch, max_wait, max_queue
        self.on_batch, self.on_depth = on_batch, on_depth
        self._queue: asyncio.Queue[Job] | None = None
        self._held: list[Job] = []  # taken from the queue but of another shape than the batch being run
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnv2-infer")

    @property
    def depth(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + len(self._held)

    def full(self) -> bool:
        """Whether :meth:`submit` would refuse a job now (waiting jobs, of every shape, count)."""
        return self.depth >= self.max_queue

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._work(), name="mnv2-batcher")

    async def stop(self) -> None:
        """Stop the worker (after the server has answered the requests in flight) and its thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    async def submit(self, job: Job) -> Any:
        """Queue ``job`` and wait for its result; :class:`QueueFull` at once when the queue is full."""
        assert self._queue is not None, "start() the batcher first"
        if self.full():
            raise QueueFull(f"{self.max_queue} requests are waiting already")
        job.future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(job)
        self.on_depth(self.depth)
        return await job.future

    async def _next_batch(self) -> list[Job]:
        assert self._queue is not None
        first = self._held.pop(0) if self._held else await self._queue.get()
        shape = tuple(first.tensor.shape)
        batch, rest = [first], []
        for j in self._held:
            (batch if tuple(j.tensor.shape) == shape and len(batch) < self.max_batch else rest).append(j)
        self._held = rest
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            (batch if tuple(job.tensor.shape) == shape else self._held).append(job)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            batch = [j for j in batch if not j.future.done()]  # a client that went away was cancelled
            self.on_depth(self.depth)
            if not batch:
                continue
            self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self._pool, self.run_batch, batch)
            except Exception as e:  # the requests get the error; the worker goes on
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j, r in zip(batch, results):
                if not j.future.done():
                    j.future.set_result(r)
