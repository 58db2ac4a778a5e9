"""The service's batcher on its own, with an executor the test runs by hand: which items each model call gets
(turns between requests, the size and token budgets), that a request that has gone leaves no work behind, and that a
failed call fails every request in it. Ordered by events (a call runs when the test says so), never by the clock."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from altclip.server.batching import DynamicBatcher


class ManualExecutor(concurrent.futures.Executor):
    """Holds each submitted call until ``run_next`` runs it; ``calls`` has the batches it was given, in order."""

    def __init__(self):
        self.pending: list[tuple] = []
        self.calls: list[list] = []
        self.submitted = asyncio.Event()

    def submit(self, fn, *args, **kwargs):
        future = concurrent.futures.Future()
        self.pending.append((fn, args, future))
        self.submitted.set()
        return future

    async def run_next(self) -> list:
        """Waits for the batcher's next call, runs it, and gives the batch it had."""
        while not self.pending:
            self.submitted.clear()
            await self.submitted.wait()
        fn, args, future = self.pending.pop(0)
        self.calls.append(list(args[0]))
        try:
            future.set_result(fn(*args))
        except Exception as e:
            future.set_exception(e)
        return self.calls[-1]


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))  # (30 s: only a hang guard)


async def settled() -> None:
    """Lets every task that can run, run (the batcher waiting for its call, requests queueing their items)."""
    for _ in range(20):
        await asyncio.sleep(0)


def doubled(values: list) -> list:
    return [2 * v for v in values]


def test_requests_take_turns_in_the_batches():
    """While one call runs, a request of ten items and then one of one item queue up: the next batch takes one item
    of each in turn, so the small request is done in the next call, not after the ten."""

    async def scenario():
        executor = ManualExecutor()
        batcher = DynamicBatcher(doubled, executor=executor, max_batch_size=4, max_wait_ms=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([0]))
        await settled()  # the call of [0] is submitted and held
        big = asyncio.ensure_future(batcher.submit(list(range(100, 110))))
        small = asyncio.ensure_future(batcher.submit([7]))
        await settled()
        assert await executor.run_next() == [0] and await first == [0]
        assert await executor.run_next() == [100, 7, 101, 102]
        assert await small == [14]
        assert await executor.run_next() == [103, 104, 105, 106]
        assert await executor.run_next() == [107, 108, 109]
        assert await big == [2 * v for v in range(100, 110)]
        await batcher.stop()

    run(scenario)


def test_batches_stay_within_their_tokens_counted_as_padded():
    """A batch costs its size times its largest item: with 100 tokens, four items of 25, or two of 40 and one of 20
    (3 x 40 = 120 would be over)."""

    async def scenario():
        executor = ManualExecutor()
        batcher = DynamicBatcher(doubled, executor=executor, max_batch_size=32, max_batch_tokens=100, max_wait_ms=0)
        batcher.start()
        hold = asyncio.ensure_future(batcher.submit([0]))
        await settled()
        request = asyncio.ensure_future(batcher.submit([1, 2, 3, 4, 5, 6, 7], [25, 25, 25, 25, 40, 20, 40]))
        await settled()
        await executor.run_next()
        assert await executor.run_next() == [1, 2, 3, 4]  # 4 x 25
        assert await executor.run_next() == [5, 6]  # 3 x 40 would be 120
        assert await executor.run_next() == [7]
        assert await request == [2, 4, 6, 8, 10, 12, 14] and await hold == [0]
        await batcher.stop()

    run(scenario)


def test_an_item_over_the_tokens_alone_still_runs():
    async def scenario():
        executor = ManualExecutor()
        batcher = DynamicBatcher(doubled, executor=executor, max_batch_tokens=10, max_wait_ms=0)
        batcher.start()
        request = asyncio.ensure_future(batcher.submit([1, 2], [50, 50]))
        assert await executor.run_next() == [1]
        assert await executor.run_next() == [2]
        assert await request == [2, 4]
        await batcher.stop()

    run(scenario)


def test_a_full_batch_does_not_wait():
    """With an hour to wait for more items, a batch that is full runs at once."""

    async def scenario():
        executor = ManualExecutor()
        batcher = DynamicBatcher(doubled, executor=executor, max_batch_size=3, max_wait_ms=3_600_000)
        batcher.start()
        request = asyncio.ensure_future(batcher.submit([1, 2, 3]))
        assert await executor.run_next() == [1, 2, 3]
        assert await request == [2, 4, 6]
        await batcher.stop()

    run(scenario)


def test_a_request_that_has_gone_leaves_no_work_behind():
    """A request cancelled (its client gone, its time up) while its items wait: they never reach the model, and
    the batcher counts nothing waiting."""

    async def scenario():
        executor = ManualExecutor()
        batcher = DynamicBatcher(doubled, executor=executor, max_batch_size=2, max_wait_ms=0)
        batcher.start()
        hold = asyncio.ensure_future(batcher.submit([0]))
        await settled()
        gone = asyncio.ensure_future(batcher.submit([1, 2, 3, 4]))
        stays = asyncio.ensure_future(batcher.submit([9]))
        await settled()
        gone.cancel()
        await settled()
        await executor.run_next()
        assert await executor.run_next() == [9]
        assert await stays == [18] and await hold == [0]
        assert gone.cancelled() and batcher.waiting == 0 and not executor.pending
        await batcher.stop()

    run(scenario)


def test_a_failed_call_fails_every_request_in_it_and_the_batcher_goes_on():
    def fails_on_13(values: list) -> list:
        if 13 in values:
            raise RuntimeError("the model failed")
        return doubled(values)

    async def scenario():
        executor = ManualExecutor()
        batcher = DynamicBatcher(fails_on_13, executor=executor, max_batch_size=4, max_wait_ms=0)
        batcher.start()
        hold = asyncio.ensure_future(batcher.submit([0]))
        await settled()
        unlucky = asyncio.ensure_future(batcher.submit([13]))
        neighbour = asyncio.ensure_future(batcher.submit([1]))
        await settled()
        await executor.run_next()
        assert await executor.run_next() == [13, 1]
        for request in (unlucky, neighbour):
            with pytest.raises(RuntimeError, match="the model failed"):
                await request
        later = asyncio.ensure_future(batcher.submit([2]))
        assert await executor.run_next() == [2] and await later == [4] and await hold == [0]
        await batcher.stop()

    run(scenario)


def test_a_batcher_not_started_says_so():
    batcher = DynamicBatcher(doubled, executor=ManualExecutor())
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(batcher.submit([1]))


def test_the_warm_up_runs_alone_at_once():
    """``run_alone`` (the service's warm-up) does not wait an hour for company, and is counted as a batch."""

    async def scenario():
        executor, seen = ManualExecutor(), []
        batcher = DynamicBatcher(
            doubled, executor=executor, max_wait_ms=3_600_000, on_batch=lambda n, s: seen.append(n)
        )
        warm = asyncio.ensure_future(batcher.run_alone([5]))
        assert await executor.run_next() == [5]
        assert await warm == [10] and seen == [1]

    run(scenario)
