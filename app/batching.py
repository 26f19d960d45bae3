"""Server-side micro-batching of detect requests into one ONNX Runtime call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from app.aio import in_thread

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    grid: np.ndarray  # (S, S, 5B + C) of one image
    model: Any  # the served model that produced it (stays valid across a swap)
    inference_ms: float
    queue_ms: float
    batch_size: int


P = TypeVar("P")
T = TypeVar("T")


@dataclass
class Ran(Generic[P]):
    """What :meth:`MicroBatcher.run_alone` returns: the prepared input and its result."""

    prepared: P
    result: BatchResult


class MicroBatcher:
    """Gathers images from concurrent requests and runs them as one batch.

    A request that finds the service idle runs at once (no added latency).
    When other requests are still decoding, the batch waits up to ``wait_ms``
    for them, up to ``max_batch`` images. Inference runs in a single thread so
    that ONNX Runtime's own intra-op threads own the cores.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        wait_ms: float,
        on_batch: Callable[[Any, float, list[float]], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.on_batch = on_batch
        self.incoming = 0  # requests decoding an image that will be submitted soon
        self._queue: asyncio.Queue[tuple[np.ndarray, Any, asyncio.Future, float]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._busy = 0  # jobs handed to the inference thread and not yet done

    @property
    def idle(self) -> bool:
        """No batch running or queued, and no other request on its way."""
        return self._busy == 0 and self._queue.empty() and self.incoming <= 1

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Around the decoding of an image that will be submitted: batches wait for it."""
        self.incoming += 1
        try:
            yield
        finally:
            self.incoming -= 1

    async def run_alone(self, prepare: Callable[[], P], model: Any) -> Ran[P]:
        """Run ``prepare()`` (decode and resize; its result has the network input as
        ``.array``) and the model on that one image in a single trip to the inference
        thread."""

        def job() -> tuple[P, np.ndarray, float]:
            prepared = prepare()
            t0 = time.perf_counter()
            grid = model.run_alone(prepared.array[None])[0]
            return prepared, grid, time.perf_counter() - t0

        self._busy += 1
        try:
            prepared, grid, seconds = await in_thread(self._executor, job)
        finally:
            self._busy -= 1
        if self.on_batch is not None:
            self.on_batch(model, seconds, [0.0])
        return Ran(prepared, BatchResult(grid, model, seconds * 1000, 0.0, 1))

    def observe(self, model: Any, seconds: float) -> None:
        """An image run outside the batcher (a lane), counted with the batches."""
        if self.on_batch is not None:
            self.on_batch(model, seconds, [0.0])

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (an ONNX Runtime call of its own, e.g. a tensor sent whole) on the
        inference thread, in turn with the batches."""
        self._busy += 1
        try:
            return await in_thread(self._executor, fn)
        finally:
            self._busy -= 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray, model: Any) -> BatchResult:
        """``image``: ``(size, size, 3)`` uint8, prepared for ``model``, which runs it
        (so a request that started before a model swap finishes on the old model)."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, model, fut, time.perf_counter()))
        return await fut

    async def _gather(self) -> list[tuple[np.ndarray, Any, asyncio.Future, float]]:
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
        while True:
            batch = [b for b in await self._gather() if not b[2].done()]
            groups: dict[int, list] = {}
            for item in batch:  # one ONNX Runtime call per model (two only mid-swap)
                groups.setdefault(id(item[1]), []).append(item)
            for items in groups.values():
                await self._run(items)

    async def _run(self, items: list[tuple[np.ndarray, Any, asyncio.Future, float]]) -> None:
        model = items[0][1]
        images = np.stack([b[0] for b in items])
        t0 = time.perf_counter()
        self._busy += 1
        try:
            grids = await in_thread(self._executor, model.run, images)
        except Exception as exc:  # hand the error to every waiting request
            log.exception("inference failed")
            for _, _, fut, _ in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._busy -= 1
        seconds = time.perf_counter() - t0
        if self.on_batch is not None:
            self.on_batch(model, seconds, [t0 - queued_at for *_, queued_at in items])
        for (_, _, fut, queued_at), grid in zip(items, grids, strict=True):
            if not fut.done():
                queue_ms = (t0 - queued_at) * 1000
                fut.set_result(BatchResult(grid, model, seconds * 1000, queue_ms, len(items)))
