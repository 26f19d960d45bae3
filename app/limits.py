"""Request bodies bounded while they stream in, chunked or not, before any parsing or
authentication reads them: a plain ASGI middleware (no buffering of its own)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, Callable
from typing import Any

from starlette.exceptions import HTTPException


def _message(limit: int) -> str:
    return (
        f"the request body exceeds {limit} bytes (YOLOV1_MAX_UPLOAD_MB for images and "
        "scoring, YOLOV1_MAX_DATASET_UPLOAD_MB for data sets, YOLOV1_MAX_JSON_BYTES else)"
    )


async def read_capped(chunks: AsyncIterable[bytes], limit: int, too_large: Exception) -> bytes:
    """All of a stream of bytes, raising ``too_large`` as soon as it passes ``limit``."""
    out, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large
        out.append(chunk)
    return b"".join(out)


class BodyTooLarge(HTTPException):
    """An HTTPException, so that whoever is reading the body (FastAPI's own parsing
    included, which turns other errors into 400) lets it through as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _message(limit))


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"no part of the request body came for {seconds:g} s")


class BodyLimitMiddleware:
    """Answers 413 as soon as a body passes ``limit_for(path)`` bytes, and 408 when the
    client stops sending it for ``timeout_s``."""

    def __init__(
        self, app: Any, limit_for: Callable[[str], tuple[int, str]], timeout_s: float
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit, setting = self.limit_for(path)
        too_large = f"the request body exceeds {limit} bytes ({setting})"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._refuse(send, path, 413, too_large)
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise BodyTimeout(self.timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, path, 413, too_large)
        except BodyTimeout as exc:
            if not started:
                await self._refuse(send, path, 408, exc.detail)

    @staticmethod
    async def _refuse(send: Any, path: str, status: int, message: str) -> None:
        # KServe v2 clients read {"error": ...}; everything else FastAPI's {"detail": ...}.
        key = "error" if path.startswith("/v2/") else "detail"
        body = json.dumps({key: message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
