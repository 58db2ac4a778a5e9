"""Dynamic batching for the server: concurrent requests are gathered into model batches.

Each request puts its items (texts, or decoded images) in the queue and awaits their results. A worker task waits
for the first item, then for more until the batch is full or ``max_wait_ms`` has passed, and runs the model on the
whole batch in a worker thread, so the event loop keeps serving.

Requests take turns: a batch takes one item from each waiting request in turn, so a request of one text is in the
next batch even behind a classification of two thousand prompts, which shares the model instead of holding it.
The queue is bounded by what feeds it: the service admits at most ``max_queue`` requests at once
(``middleware.Admission``), each with a bounded number of items. A request that has gone (timeout, client
disconnect) takes its items that have not run out of the queue.
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
    future: asyncio.Future


class DynamicBatcher:
    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        *,
        executor: Executor,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.fn = fn
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch  # (batch size, model seconds), for metrics
        self._requests: deque[deque[_Item]] = deque()  # the items of each waiting request, requests in turn
        self._queued = 0  # items in _requests
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.waiting = 0  # items queued or in the running batch

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, values: Sequence[Any]) -> list[Any]:
        """The results for ``values``, in order."""
        if self._arrived is None:
            raise RuntimeError("batcher not started")
        if not values:
            return []
        loop = asyncio.get_running_loop()
        items = [_Item(v, loop.create_future()) for v in values]
        queue = deque(items)
        self._requests.append(queue)
        self._queued += len(queue)
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
                self.waiting -= len(queue)

    def _take(self) -> list[_Item]:
        """Up to ``max_batch_size`` items, one from each waiting request in turn."""
        batch: list[_Item] = []
        while self._requests and len(batch) < self.max_batch_size:
            request = self._requests.popleft()
            batch.append(request.popleft())
            if request:
                self._requests.append(request)
        self._queued -= len(batch)
        return batch

    async def _run(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queued:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.max_wait
            while self._queued < self.max_batch_size and (timeout := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout)
                except asyncio.TimeoutError:
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
