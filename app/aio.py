"""asyncio helpers shared by the routes."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_or_cancel(*aws: Awaitable[T]) -> list[T]:
    """``asyncio.gather``, but the first failure cancels the others (image fetches,
    decodes waiting for a thread) instead of leaving them to run for a request that
    has already been answered with the error."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


def in_thread(executor: Executor, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``loop.run_in_executor(executor, fn, *args)`` without its hand-over on the event
    loop's thread: that one attaches a callback to the executor's future under the
    future's lock, just as the worker thread takes it to start the job, and then waits
    for the GIL, which the worker holds while it runs Python: 92 us of the loop's time a
    call against 33 on a 2-core AVX2 EPYC, for a job that starts in Python as decoding
    does (bench_api's ratios did not move beyond that machine's noise). The worker hands
    the result back itself."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():  # the awaiting request may have been cancelled meanwhile
            (fut.set_result if ok else fut.set_exception)(value)

    def run() -> None:
        if fut.cancelled():  # given up before it started, as run_in_executor skips it
            return
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine, as an executor does
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    # In the caller's context, as asyncio.to_thread runs it: log lines keep the request id.
    executor.submit(contextvars.copy_context().run, run)
    return fut
