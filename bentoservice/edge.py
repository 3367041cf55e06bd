"""The service's HTTP edge: limits uvicorn does not set, on every connection of `bentoml serve`.

BentoML 1.4 starts uvicorn itself (`_bentoml_impl.worker.service`) with its httptools protocol
and passes it no header-size, header-time or body-time limit (`h11_max_incomplete_event_size`
applies to h11 only; uvicorn has no read timeouts at all): a 120 MB header was parsed for 17.9 s,
and a client that stops half way through its headers or its body held its connection forever.
`install` registers `EdgeProtocol` under uvicorn's `auto` HTTP protocol name (the one BentoML's
`uvicorn.Config` asks for) before the server starts; it adds, per connection:

- the request line and headers at most `max_header_bytes` (431 as soon as they pass it);
- the head within `header_timeout_s` of its first byte (or of connecting), the whole body within
  `body_timeout_s` of the head: else 408 (when no answer has started) and the connection closed;
- at most `max_connections` open connections in the process: one more gets 503 and is closed.

Every such answer is `{"error", "reason"}` JSON with the reason in `x-catsdogs-reject-reason`,
counted in `catsdogs_rejected_requests_total{reason}` like the guard's (bentoservice/guard.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import ClassVar

from uvicorn import config as uvicorn_config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bentoservice.guard import EDGE_REFUSED, REJECT_HEADER, REJECTED

logger = logging.getLogger("bentoservice")

STATUS_TEXT = {408: b"Request Timeout", 431: b"Request Header Fields Too Large",
               503: b"Service Unavailable"}


@dataclass(frozen=True)
class EdgeLimits:
    """Bytes, seconds and connections (meanings in the module docstring)."""

    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `EdgeLimits` (set by `install`)."""

    limits: ClassVar[EdgeLimits | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True
        self._closed_by_edge = False
        self._timer: asyncio.TimerHandle | None = None
        limits = self._limits()
        if len(self.connections) > limits.max_connections:
            self._refuse(503, "too_many_connections", f"the service holds {limits.max_connections}"
                         " connections, its limit (CATSDOGS_MAX_CONNECTIONS); retry shortly")
            return
        self._arm(limits.header_timeout_s, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closed_by_edge:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        limit = self._limits().max_header_bytes
        if self._in_head and self._head_bytes > limit and not self._closed_by_edge:
            self._head_too_large(self._head_bytes)

    def send_400_response(self, msg: str) -> None:
        if not self._closed_by_edge:  # the parser stopped on what the edge already refused
            REJECTED.labels(reason="bad_http").inc()
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._arm(self._limits().header_timeout_s, "header_timeout")

    def on_headers_complete(self) -> None:
        self._in_head = False
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self._limits().max_header_bytes:
            self._head_too_large(size)
            return
        self._arm(self._limits().body_timeout_s, "body_timeout")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._closed_by_edge:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._closed_by_edge:
            super().on_message_complete()

    def _limits(self) -> EdgeLimits:
        assert self.limits is not None, "bentoservice.edge.install was not called"
        return self.limits

    def _head_too_large(self, size: int) -> None:
        limit = self._limits().max_header_bytes
        self._refuse(431, "headers_too_large", f"the request line and headers passed {limit} "
                     f"bytes ({size} received), the limit (CATSDOGS_MAX_HEADER_BYTES)")

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out, seconds, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, seconds: float, reason: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        part = "its line and headers" if reason == "header_timeout" else "its body"
        setting = "CATSDOGS_HEADER_TIMEOUT_S" if reason == "header_timeout" else \
            "CATSDOGS_BODY_TIMEOUT_S"
        self._refuse(408, reason, f"the request did not send {part} within {seconds:g} s "
                     f"({setting}); the connection is closed")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer `status` (unless an answer already started), close the connection."""
        self._closed_by_edge = True
        self._disarm()
        REJECTED.labels(reason=reason).inc()
        logger.info("%s %s from %s: %s", status, reason, self.client, message)
        if self.cycle is None or not self.cycle.response_started:
            body = json.dumps({"error": message, "reason": reason}).encode()
            self.transport.write(b"".join([
                b"HTTP/1.1 %d %s\r\n" % (status, STATUS_TEXT[status]),
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                REJECT_HEADER.encode() + b": " + reason.encode() + b"\r\n",
                b"connection: close\r\n\r\n", body]))
        if self.cycle is not None and not self.cycle.response_complete:
            state = self.cycle.scope.get("state")
            if isinstance(state, dict):
                state[EDGE_REFUSED] = reason
            self.cycle.disconnected = True   # the app reads a disconnect; its answer goes nowhere
            self.cycle.message_event.set()
        self.transport.close()


def install(limits: EdgeLimits) -> None:
    """Make `EdgeProtocol` with `limits` the protocol of every uvicorn server this process starts
    afterwards (BentoML's worker imports the service, then builds its `uvicorn.Config`)."""
    EdgeProtocol.limits = limits
    uvicorn_config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{EdgeProtocol.__name__}"
