"""A read timeout for request headers, which uvicorn does not have: its keep-alive
timer stops at a request's first byte, so a client that sends one header line every
few seconds (slowloris) holds a connection for ever. Bodies have their own timeout
(``app.limits``)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def with_header_timeout(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol, closing connections whose request headers take longer
    than ``seconds``, counted from the connection (its first request) or from the
    first byte of each later request."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(TIMEOUT)
                self.transport.close()

    return HeaderTimeoutProtocol
