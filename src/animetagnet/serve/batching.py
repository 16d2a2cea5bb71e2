"""Dynamic micro-batching: concurrent requests share one inference call, the event loop never blocks.

Each request puts a preprocessed array in a queue and awaits a future. One worker task takes
the first waiting item, then keeps collecting until it has `batch_size` items or `max_wait_ms`
has passed since that first item, runs `predict(np.stack(...))` on a single inference thread
(one model, one session: concurrent batches would only fight for the same cores), and
resolves the futures. Items whose caller gave up (timeout, disconnect) are dropped before
inference, so an abandoned request costs no model time.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


class NotRunning(Exception):
    """The batcher has not been started or has been stopped."""


@dataclass
class BatchStats:
    """Counters for /v1/stats and the benchmark (read-only outside the worker)."""

    batches: int = 0
    items: int = 0
    dropped: int = 0
    max_batch: int = 0
    inference_s: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "batches": self.batches,
            "items": self.items,
            "dropped_before_inference": self.dropped,
            "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
            "max_batch": self.max_batch,
            "inference_seconds": round(self.inference_s, 3),
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class MicroBatcher:
    """Collects single preprocessed images into batches for `predict` ([N,H,W,3] -> [N,T])."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self._predict = predict
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(NotRunning("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, array: np.ndarray) -> np.ndarray:
        """Probabilities for one preprocessed [H,W,3] image. Cancel-safe."""
        if not self.running or self._queue is None:
            raise NotRunning("the model is not ready")
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"too many images waiting for the model ({self.max_queue}); retry shortly")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((array, fut))
        return await fut

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        items = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(items) < self.batch_size:
            try:
                items.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        live = [it for it in items if not it[1].done()]
        self.stats.dropped += len(items) - len(live)
        return live

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if not items:
                continue
            batch = np.stack([a for a, _ in items])
            t0 = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._executor, self._predict, batch)
            except asyncio.CancelledError:
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(NotRunning("the service is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - an inference failure answers every waiter
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            n = len(items)
            st = self.stats
            st.batches += 1
            st.items += n
            st.max_batch = max(st.max_batch, n)
            st.inference_s += time.perf_counter() - t0
            st.sizes[n] = st.sizes.get(n, 0) + 1
            for (_, fut), row in zip(items, probs):
                if not fut.done():
                    fut.set_result(row)
