"""Server-side micro-batching of detect requests into one ONNX Runtime call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    grid: np.ndarray  # (S, S, 5B + C) of one image
    model: Any  # the served model that produced it (stays valid across a swap)
    inference_ms: float
    queue_ms: float
    batch_size: int


class MicroBatcher:
    """Gathers images from concurrent requests and runs them as one batch.

    A request that finds the service idle runs at once (no added latency).
    When other requests are still decoding, the batch waits up to ``wait_ms``
    for them, up to ``max_batch`` images. Inference runs in a single thread so
    that ONNX Runtime's own intra-op threads own the cores.
    """

    def __init__(
        self,
        get_model: Callable[[], Any],
        *,
        max_batch: int,
        wait_ms: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.get_model = get_model
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.on_batch = on_batch
        self.incoming = 0  # requests decoding an image that will be submitted soon
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future, float]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray) -> BatchResult:
        """``image``: ``(size, size, 3)`` uint8 at the model's input size."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, fut, time.perf_counter()))
        return await fut

    async def _gather(self) -> list[tuple[np.ndarray, asyncio.Future, float]]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if self.incoming <= 0 or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [b for b in batch if not b[1].done()]
            if not live:
                continue
            model = self.get_model()  # one model for the whole batch, even mid-swap
            images = np.stack([b[0] for b in live])
            t0 = time.perf_counter()
            try:
                grids = await loop.run_in_executor(self._executor, model.run, images)
            except Exception as exc:  # hand the error to every waiting request
                log.exception("inference failed")
                for _, fut, _ in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            ms = (time.perf_counter() - t0) * 1000
            if self.on_batch is not None:
                self.on_batch(len(live), ms / 1000)
            for (_, fut, queued_at), grid in zip(live, grids, strict=True):
                if not fut.done():
                    queue_ms = (t0 - queued_at) * 1000
                    fut.set_result(BatchResult(grid, model, ms, queue_ms, len(live)))
