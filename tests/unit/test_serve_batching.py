"""MicroBatcher without a model: batch formation, the wait window, cancellation, errors, load shedding."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from taxonomist.serve.batching import BatcherBusy, BatcherStopped, MicroBatcher


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(items)
        time.sleep(self.delay)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [x * 10 for x in items]


def test_concurrent_submissions_share_forwards_up_to_the_batch_size() -> None:
    async def main() -> list[list[int]]:
        rec = Recorder()
        batcher = MicroBatcher(rec, max_batch_size=4, max_wait_ms=200)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
        await batcher.stop()
        assert results == [[i * 10] for i in range(10)]
        assert rec.threads and all(t.startswith("taxonomist-batch") for t in rec.threads)
        return rec.batches

    assert [len(b) for b in asyncio.run(main())] == [4, 4, 2]


def test_a_lone_item_waits_at_most_max_wait() -> None:
    async def main() -> float:
        batcher = MicroBatcher(Recorder(), max_batch_size=32, max_wait_ms=50)
        await batcher.start()
        start = time.perf_counter()
        assert await batcher.submit([1, 2]) == [10, 20]
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert 0.04 <= asyncio.run(main()) < 1.0


def test_a_cancelled_request_is_dropped_before_its_forward() -> None:
    async def main() -> list[list[int]]:
        rec = Recorder(delay=0.2)
        batcher = MicroBatcher(rec, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.05)  # 1 is in its forward; 2 queues behind it and times out there
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit([2]), 0.05)
        assert await first == [10]
        assert await batcher.submit([3]) == [30]
        await batcher.stop()
        return rec.batches

    assert asyncio.run(main()) == [[1], [3]]


def test_a_failed_forward_fails_its_items_and_the_worker_goes_on() -> None:
    async def main() -> None:
        batcher = MicroBatcher(Recorder(fail_on=7), max_batch_size=8, max_wait_ms=0)
        await batcher.start()
        with pytest.raises(ValueError, match="bad item 7"):
            await batcher.submit([7])
        assert batcher.running and await batcher.submit([1]) == [10]
        await batcher.stop()
        assert not batcher.running
        with pytest.raises(BatcherStopped):
            await batcher.submit([1])

    asyncio.run(main())


def test_a_full_queue_sheds_load() -> None:
    async def main() -> None:
        batcher = MicroBatcher(Recorder(delay=0.1), max_batch_size=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        busy = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.02)  # 1 is in its forward, the queue is empty again
        queued = asyncio.create_task(batcher.submit([2, 3]))
        await asyncio.sleep(0)
        with pytest.raises(BatcherBusy):
            await batcher.submit([4])
        assert await busy == [10] and await queued == [20, 30]
        await batcher.stop()

    asyncio.run(main())


def test_a_failed_forward_fails_only_the_submission_that_broke_it() -> None:
    """Regression: one request's bad item failed every request that shared its forward (all 500)."""

    async def main() -> list[list[int]]:
        rec = Recorder(fail_on=7)
        batcher = MicroBatcher(rec, max_batch_size=8, max_wait_ms=200)
        await batcher.start()
        good, bad, more = await asyncio.gather(
            batcher.submit([1]), batcher.submit([7, 8]), batcher.submit([2, 3]), return_exceptions=True
        )
        await batcher.stop()
        assert good == [10] and more == [20, 30]
        assert isinstance(bad, ValueError) and "bad item 7" in str(bad)
        return rec.batches

    assert asyncio.run(main()) == [[1, 7, 8, 2, 3], [1], [7, 8], [2, 3]]


def test_a_cancelled_request_frees_its_place_in_the_queue_at_once() -> None:
    """Regression: a timed-out request's items stayed queued until the worker reached them, so while one
    forward ran, new requests were shed as busy because of items nobody waited for."""

    async def main() -> None:
        batcher = MicroBatcher(Recorder(delay=0.3), max_batch_size=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.05)  # 1 is in its forward
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit([2, 3]), 0.05)
        assert batcher.pending == 0
        assert await batcher.submit([4]) == [40]
        assert await first == [10]
        await batcher.stop()

    asyncio.run(main())


@pytest.mark.parametrize("wait", [float("inf"), float("nan"), -1.0])
def test_a_wait_that_is_no_finite_duration_is_refused(wait: float) -> None:
    """Regression: inf was taken, and a lone request then waited for company until its timeout (504)."""
    with pytest.raises(ValueError, match=f"max_wait_ms must be a finite number, not negative, got {wait}"):
        MicroBatcher(Recorder(), max_wait_ms=wait)
