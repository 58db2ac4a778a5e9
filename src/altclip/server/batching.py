"""Dynamic batching for the server: concurrent requests are gathered into model batches.

Each request puts its items (texts, or decoded images) into a queue and awaits their results. A worker task takes
the first waiting item, then gathers more until the batch is full or ``max_wait_ms`` has passed since, and runs
the model on the whole batch in a worker thread, so the event loop keeps serving. The queue is bounded by what feeds
it: the service admits at most ``max_queue`` requests at once (``middleware.Admission``), each with a bounded number
of items. The items of a request that has gone (timeout, client disconnect) are skipped when their batch forms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


@dataclass
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
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self.waiting = 0  # items queued or in the running batch

    def start(self) -> None:
        self._queue = asyncio.Queue()
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
        if self._queue is None:
            raise RuntimeError("batcher not started")
        loop = asyncio.get_running_loop()
        items = [_Item(v, loop.create_future()) for v in values]
        self.waiting += len(items)
        for item in items:
            self._queue.put_nowait(item)
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        finally:
            for item in items:  # a cancelled request (timeout, disconnect) leaves no work behind
                if not item.future.done():
                    item.future.cancel()

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            live = [item for item in batch if not item.future.done()]  # skip items of cancelled requests
            self.waiting -= len(batch) - len(live)
            if not live:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [item.value for item in live])
            except Exception as e:  # the model failed: every request in the batch gets the error
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(e)
            else:
                for item, result in zip(live, results):
                    if not item.future.done():
                        item.future.set_result(result)
            finally:
                self.waiting -= len(live)
            if self.on_batch is not None:
                self.on_batch(len(live), time.perf_counter() - start)
