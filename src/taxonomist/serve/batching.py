"""Dynamic micro-batching: items from concurrent requests share one model forward.

A network runs a batch of 16 for much less than 16 times the cost of one (always on a GPU; on a CPU
mostly through fewer Python and dispatch overheads), so the server waits a few milliseconds for
company instead of running each request alone. The wait is counted from the oldest waiting item, so
an item that already queued behind a running forward is not held back again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatcherBusy(RuntimeError):
    """The queue is full: shed load now rather than answer after the client gave up."""


class BatchTooLarge(ValueError):
    """One submission holds more items than the queue may ever hold: waiting would never help."""


class BatcherStopped(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class _Item(Generic[T, R]):
    value: T
    future: asyncio.Future[R]
    enqueued: float
    submission: object
    """Shared by the items of one :meth:`MicroBatcher.submit` call (one request)."""


class MicroBatcher(Generic[T, R]):
    """Collects up to ``max_batch_size`` items, or what arrived within ``max_wait_ms`` of the oldest,
    and runs ``run_batch`` on them in a dedicated thread so the event loop keeps serving requests.

    ``run_batch`` gets a list of items and returns one result per item, in order. One thread means one
    forward at a time: the model needs no locking, and torch uses all cores inside each forward.
    ``on_batch(size, seconds)`` is called after every forward (for metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not 0 <= max_wait_ms < math.inf:  # inf: a lone request waited for company until it timed out
            raise ValueError(f"max_wait_ms must be a finite number, not negative, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[_Item[T, R]] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def pending(self) -> int:
        """Items waiting for a forward (not counting the one running)."""
        return len(self._pending)

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taxonomist-batch")
        self._task = asyncio.create_task(self._loop(), name="taxonomist-batcher")

    async def stop(self) -> None:
        """Stop taking work; whatever still waits fails with :class:`BatcherStopped`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        _fail(self._pending, BatcherStopped("server is shutting down"))
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, values: Sequence[T]) -> list[R]:
        """Results for ``values`` (all queued at once, so one request's items stay together).

        Cancelling the caller (a request timeout) drops its items that have not reached a forward yet.
        """
        if not self.running:
            raise BatcherStopped("batcher is not running")
        if len(values) > self.max_queue:
            raise BatchTooLarge(
                f"{len(values)} images in one request, over the queue limit of {self.max_queue}"
            )
        if len(self._pending) + len(values) > self.max_queue:
            raise BatcherBusy(f"{len(self._pending)} images already queued (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        now = loop.time()
        submission = object()
        items = [_Item(v, loop.create_future(), now, submission) for v in values]
        self._pending.extend(items)
        assert self._arrived is not None
        self._arrived.set()
        # gather cancels the futures if this coroutine is cancelled; the worker skips cancelled items.
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except asyncio.CancelledError:
            # Out of the queue now: left there until the worker got to them, they counted against
            # max_queue, so new requests were shed as busy while nothing but dead items waited.
            kept = [item for item in self._pending if item.submission is not submission]
            self._pending.clear()
            self._pending.extend(kept)
            raise

    async def _loop(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = self._pending[0].enqueued + self.max_wait_s
            while len(self._pending) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                # An Event, not queue.get under wait_for: a timeout can then never swallow an item.
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch: list[_Item[T, R]] = []
            while self._pending and len(batch) < self.max_batch_size:
                item = self._pending.popleft()
                if not item.future.done():  # done here = cancelled by its request's timeout
                    batch.append(item)
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item[T, R]]) -> None:
        try:
            await self._answer(loop, batch)
        except asyncio.CancelledError:
            _fail(batch, BatcherStopped("server is shutting down"))
            raise

    async def _answer(self, loop: asyncio.AbstractEventLoop, batch: list[_Item[T, R]]) -> None:
        """One forward for ``batch``. Should it fail on items of several submissions, each submission is
        run again alone: one request's bad input fails that request, not every request that shared its
        forward."""
        try:
            results = await self._forward(loop, batch)
        except Exception as exc:  # one failed forward fails its own items, never the worker
            submissions: dict[object, list[_Item[T, R]]] = {}
            for item in batch:
                if not item.future.done():
                    submissions.setdefault(item.submission, []).append(item)
            if len(submissions) < 2:
                _fail(batch, exc)
                return
            for items in submissions.values():
                await self._answer(loop, items)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def _forward(self, loop: asyncio.AbstractEventLoop, batch: list[_Item[T, R]]) -> Sequence[R]:
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [i.value for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            return results
        finally:
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - start)


def _fail(items: Iterable[_Item], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)
