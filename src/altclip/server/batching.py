"""Dynamic batching for the server: concurrent requests are gathered into model batches.

Each request puts its items (texts, or decoded images), each with its cost in tokens, in the queue and awaits their
results. A worker task waits for the first item, then for more until the batch is full or ``max_wait_ms`` has
passed, and runs the model on the whole batch in the executor, so the event loop keeps serving. A batch is full at
``max_batch_size`` items or ``max_batch_tokens`` tokens, counted as the model pays them: its size times its largest
item (texts are padded to the longest; images all cost the same).

Requests take turns: a batch takes one item from each waiting request in turn, so a request of one text is in the
next batch even behind a classification of two thousand prompts, which shares the model instead of holding it.
The queue is bounded by what feeds it: the service admits a bounded number of requests and tokens at once. A
request that has gone (timeout, client disconnect) takes its items that have not run out of the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class _Item:
    value: Any
    cost: int
    future: asyncio.Future


class DynamicBatcher:
    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        *,
        executor: Executor,
        max_batch_size: int = 32,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.fn = fn
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch  # (batch size, model seconds), for metrics
        self._requests: deque[deque[_Item]] = deque()  # the items of each waiting request, requests in turn
        self._queued = 0  # items in _requests
        self._queued_cost = 0  # their tokens
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None  # the worker, once started
        self.waiting = 0  # items queued or in the running batch

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, values: Sequence[Any], costs: Sequence[int] | None = None) -> list[Any]:
        """The results for ``values`` (each costing ``costs`` tokens; 1 each when not given), in order."""
        if self._task is None:
            raise RuntimeError("batcher not started")
        if not values:
            return []
        loop = asyncio.get_running_loop()
        costs = [1] * len(values) if costs is None else costs
        items = [_Item(v, c, loop.create_future()) for v, c in zip(values, costs, strict=True)]
        queue = deque(items)
        self._requests.append(queue)
        self._queued += len(queue)
        self._queued_cost += sum(costs)
        self.waiting += len(queue)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        finally:
            for item in items:  # a cancelled request (timeout, disconnect) leaves no work behind
                if not item.future.done():
                    item.future.cancel()
            if queue:
                self._requests = deque(r for r in self._requests if r is not queue)
                self._queued -= len(queue)
                self._queued_cost -= sum(i.cost for i in queue)
                self.waiting -= len(queue)

    async def run_alone(self, values: list[Any]) -> list[Any]:
        """``values`` as a batch of their own, at once, without waiting for others (the warm-up)."""
        start = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, values)
        if self.on_batch is not None:
            self.on_batch(len(values), time.perf_counter() - start)
        return list(results)

    def _full(self) -> bool:
        return self._queued >= self.max_batch_size or self._queued_cost >= self.max_batch_tokens

    def _take(self) -> list[_Item]:
        """One item from each waiting request in turn, while the batch stays within its size and tokens (its size
        times its largest item); at least one item, whatever it costs."""
        batch: list[_Item] = []
        widest = 0
        while self._requests and len(batch) < self.max_batch_size:
            request = self._requests[0]
            wider = max(widest, request[0].cost)
            if batch and (len(batch) + 1) * wider > self.max_batch_tokens:
                break
            self._requests.popleft()
            batch.append(request.popleft())
            widest = wider
            if request:
                self._requests.append(request)
        self._queued -= len(batch)
        self._queued_cost -= sum(item.cost for item in batch)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queued:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.max_wait
            while not self._full() and (timeout := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [item.value for item in batch])
            except Exception as e:  # the model failed: every request in the batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
            else:
                for item, result in zip(batch, results):
                    if not item.future.done():
                        item.future.set_result(result)
            finally:
                self.waiting -= len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - start)
