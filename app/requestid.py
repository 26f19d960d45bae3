"""A request id on every answer (``X-Request-ID``) and on the log lines written while
the request is handled (the access log's too): the client's own when it sends a sane
one (a proxy's, say), else a new one, so a user reporting a failure can name it."""

from __future__ import annotations

import copy
import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

HEADER = b"x-request-id"
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")  # no spaces or quotes to forge log lines


class RequestIdMiddleware:
    """Plain ASGI, outermost: the id is set before anything can answer (a 413 included)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), b"")
        rid = given if _SANE.fullmatch(given) else uuid.uuid4().hex.encode()
        token = REQUEST_ID.set(rid.decode())
        # For what answers outside this middleware: Starlette's handler of a 500.
        scope.setdefault("state", {})["request_id"] = rid.decode()

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def request_id_of(scope: dict) -> str:
    """The id :class:`RequestIdMiddleware` gave the request of ``scope`` ("-" if none)."""
    return scope.get("state", {}).get("request_id", "-")


class RequestIdFilter(logging.Filter):
    """Gives every record ``request_id`` ("-" outside a request), for the formats below."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def uvicorn_log_config() -> dict:
    """uvicorn's own logging configuration with the request id on each access line."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["request_id"] = {"()": RequestIdFilter}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("request_id")
    access = config["formatters"]["access"]
    access["fmt"] = access["fmt"] + " [%(request_id)s]"
    return config
