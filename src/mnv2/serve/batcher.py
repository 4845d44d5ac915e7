"""Micro-batching: concurrent requests for one model share a forward pass, from a bounded queue.

A request puts its prepared input on the model's queue and awaits the answer. One worker per model takes the first
waiting input, then whatever arrives until ``max_wait`` seconds after that one was queued (while more requests are on
their way: see :meth:`MicroBatcher.expecting`), up to ``max_batch`` inputs, runs them as one batch (inputs of one
shape only: images at other sizes wait for the next batch) on a thread of its own, and answers each request. The
queue holds at most ``max_queue`` inputs: when it is full :meth:`MicroBatcher.submit` raises :class:`QueueFull` at
once (the server answers 503), so memory stays bounded however many clients call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
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
    queued_at: float = 0.0  # time.monotonic() when submitted


class MicroBatcher:
    """Batches :class:`Job` s for ``run_batch(jobs) -> results`` (called on a worker thread, one batch at a time).

    With ``finish``, ``run_batch`` returns the model's outputs and ``finish(jobs, outputs) -> results`` turns them
    into the answers on a thread of its own, while the next batch already runs: the engine does not wait for the
    post-processing (one batch is finished at a time, so memory stays bounded by one batch more).
    ``on_batch(size)`` and ``on_depth(depth)`` report batch sizes and the queue depth (metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Job]], Any],
        *,
        finish: Callable[[list[Job], Any], list[Any]] | None = None,
        max_batch: int = 32,
        max_wait: float = 0.002,
        max_queue: int = 64,
        on_batch: Callable[[int], None] = lambda n: None,
        on_depth: Callable[[int], None] = lambda n: None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait >= 0")
        self.run_batch, self.max_batch, self.max_wait, self.max_queue = run_batch, max_batch, max_wait, max_queue
        self.finish = finish
        self.on_batch, self.on_depth = on_batch, on_depth
        self._queue: asyncio.Queue[Job] | None = None
        self._held: list[Job] = []  # taken from the queue but of another shape than the batch being run
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnv2-infer")
        self._post = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnv2-finish")
        self._finishing: asyncio.Task | None = None
        self._incoming = 0  # requests inside expecting(): being read or decoded, not yet queued

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
        if self._finishing is not None:
            await self._finishing
        self._pool.shutdown(wait=True)
        self._post.shutdown(wait=True)

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Count a request on its way to :meth:`enqueue` (its body read, its image decoded) while the block runs.

        A batch waits up to ``max_wait`` only while some request is on its way: a lone request runs at once instead
        of waiting for company that is not coming (2 ms less latency at concurrency 1 with the default wait).
        """
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    def enqueue(self, job: Job) -> asyncio.Future:
        """Queue ``job``; the future gets its result. :class:`QueueFull` at once when the queue is full."""
        assert self._queue is not None, "start() the batcher first"
        if self.full():
            raise QueueFull(f"{self.max_queue} requests are waiting already")
        job.future = asyncio.get_running_loop().create_future()
        job.queued_at = time.monotonic()
        self._queue.put_nowait(job)
        self.on_depth(self.depth)
        return job.future

    async def submit(self, job: Job) -> Any:
        """Queue ``job`` and wait for its result; :class:`QueueFull` at once when the queue is full."""
        return await self.enqueue(job)

    async def _next_batch(self) -> list[Job]:
        assert self._queue is not None
        first = self._held.pop(0) if self._held else await self._queue.get()
        shape = tuple(first.tensor.shape)
        batch, rest = [first], []
        for j in self._held:
            (batch if tuple(j.tensor.shape) == shape and len(batch) < self.max_batch else rest).append(j)
        self._held = rest
        # The wait counts from the first job's arrival: one that queued behind a running batch has waited already,
        # and waiting again would leave the engine idle between batches.
        deadline = first.queued_at + self.max_wait
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0 or not self._incoming:
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
                outputs = await loop.run_in_executor(self._pool, self.run_batch, batch)
            except Exception as e:  # the requests get the error; the worker goes on
                _answer(batch, error=e)
                continue
            if self.finish is None:
                _answer(batch, outputs)
                continue
            if self._finishing is not None:
                await self._finishing
            self._finishing = loop.create_task(self._finish(batch, outputs))

    async def _finish(self, batch: list[Job], outputs: Any) -> None:
        assert self.finish is not None
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._post, self.finish, batch, outputs)
        except Exception as e:
            _answer(batch, error=e)
        else:
            _answer(batch, results)


def _answer(batch: list[Job], results: list[Any] | None = None, error: Exception | None = None) -> None:
    """Each job's result (or ``error``), unless its client went away."""
    for i, j in enumerate(batch):
        if j.future.done():
            continue
        if error is not None:
            j.future.set_exception(error)
        else:
            j.future.set_result(results[i])  # type: ignore[index]
