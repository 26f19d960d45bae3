"""Errors the domain modules raise for bad input, and how they reach the client.

Modules that a test calls without HTTP (``app.detection``, ``app.scoring``) raise
these; one handler per type turns them into a 4xx with the message."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.requestid import REQUEST_ID, request_id_of
from model.preprocess import ImageDecodeError, ImageTooLargeError, UnsupportedFormatError

log = logging.getLogger("app")


class InputError(ValueError):
    """Input the service will not take; ``status`` is 413 (too large), 415 or 422."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# Most specific first: ImageTooLargeError and UnsupportedFormatError are decode errors.
STATUS = (
    (InputError, None),
    (ImageTooLargeError, 413),
    (UnsupportedFormatError, 415),
    (ImageDecodeError, 400),
)


def input_status(exc: Exception) -> int | None:
    """The 4xx for bad input (``STATUS``), or None when ``exc`` is not bad input."""
    return next((s or exc.status for t, s in STATUS if isinstance(exc, t)), None)


def validation_error(exc: ValidationError, where: str) -> RequestValidationError:
    """A body parsed by hand, reported as FastAPI reports its own: where and what is
    wrong, never the input (megabytes of predictions, or bytes that are not text)."""
    errors = [
        {"type": e["type"], "loc": (where, *e.get("loc", ())), "msg": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return RequestValidationError(errors)


def install(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=input_status(exc))

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and what, never the input itself: it can be megabytes, or a NaN that
        # JSON cannot carry (FastAPI's own handler would answer 500 then).
        errors = [
            {"type": e.get("type"), "loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        # Jobs and data sets live in Redis: while it is away they are unavailable, not
        # broken; detection and scoring go on.
        return JSONResponse(
            {"detail": "the job store (Redis) is not reachable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers these outside every middleware, so the id goes on here; the
        # line logged names the request, and the server's traceback follows it.
        rid = request_id_of(request.scope)
        token = REQUEST_ID.set(rid)
        try:
            log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
        finally:
            REQUEST_ID.reset(token)
        return JSONResponse(
            {"detail": f"internal error (a fault of the service, not of the request); "
                       f"the service's log names it by the request id {rid}"},
            status_code=500,
            headers={"X-Request-ID": rid},
        )  # fmt: skip

    for exc_type, _ in STATUS:
        app.add_exception_handler(exc_type, handle)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)
    app.add_exception_handler(Exception, unexpected)
