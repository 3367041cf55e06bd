"""Who may call the prediction endpoints, and how often: optional API keys and a per-client rate
limit, as ASGI middleware in front of the service (both off by default; docs/serving.md).

- API keys (`CATSDOGS_API_KEYS_FILE`): a file of keys, one a line (`#` comments and blank lines
  ignored), typically a mounted Secret. Read once at start; kept only as sha256 digests and
  compared in constant time. A request to a prediction path without a listed key in
  `Authorization: Bearer <key>` or `X-API-Key: <key>` gets 401 `{"error": "unauthorized"}`.
- Rate limit (`CATSDOGS_RATE_LIMIT_PER_MINUTE`, burst `CATSDOGS_RATE_LIMIT_BURST`): a token
  bucket per client; past it, 429 `{"error": "rate_limited"}` with `Retry-After` (whole
  seconds until a token is back). The client is its API key when keys are on, else the header
  `CATSDOGS_RATE_LIMIT_CLIENT_HEADER` (e.g. `x-real-ip`, set by a proxy you trust), else the
  connection's address. At most `MAX_CLIENTS` buckets are kept (the least recently seen go).

Only the API paths (`guard.API_PATHS`: the prediction endpoints, /explain and /feedback) and the
review queue's data (`guard.REVIEW_DATA_PATHS`: the queue and its pictures, which users
uploaded) are checked: health, readiness and metrics stay open to the orchestrator and
Prometheus, and so do the pages (/ and /review hold no user data: the review page asks for a
key and sends it with its requests).

The review queue's data show one user's pictures to another, so they are never open to the
network: without API keys they answer only a client on this host (a loopback connection whose
`X-Real-IP`, which both our proxies set to the caller's address, is loopback too, or absent), and
403 `review_needs_keys` to any other. The prediction endpoints stay open without keys: a caller
sees only its own answers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bentoservice.guard import API_PATHS, REVIEW_DATA_PATHS
from catsdogs.settings import ServingSettings

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

MAX_CLIENTS = 10_000


def read_keys(path: Path) -> frozenset[str]:
    """The sha256 digests (hex) of the keys in `path`. Raises ValueError when it lists none,
    OSError when it cannot be read."""
    keys = {line.strip() for line in path.read_text().splitlines()}
    keys = {key for key in keys if key and not key.startswith("#")}
    if not keys:
        raise ValueError(f"{path} lists no API key")
    return frozenset(_digest(key) for key in keys)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TokenBuckets:
    """Per-client token buckets: `per_minute` tokens a minute, at most `burst` saved up."""

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.rate_s = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 when granted, else the seconds until one is back."""
        now = self.clock()
        tokens, then = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate_s
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class ApiAccess:
    """ASGI middleware: API keys and rate limit on the prediction paths (module docstring).
    `keys`: sha256 digests (`read_keys`), empty = no key needed; `per_minute` 0 = no limit."""

    def __init__(self, app: Any, keys: Iterable[str] = (), per_minute: int = 0, burst: int = 0,
                 client_header: str = "",
                 paths: Iterable[str] = (*API_PATHS, *REVIEW_DATA_PATHS)) -> None:
        self.app = app
        self.keys = frozenset(keys)
        self.buckets = (TokenBuckets(per_minute, burst or per_minute) if per_minute > 0
                        else None)
        self.client_header = client_header.lower().encode("latin-1")
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        headers = dict(scope.get("headers") or [])
        if path in REVIEW_DATA_PATHS and not self.keys and not _from_this_host(scope, headers):
            await _answer(send, 403, "review_needs_keys", "the review queue shows pictures users "
                          "uploaded: from another host it needs API keys (CATSDOGS_API_KEYS_FILE); "
                          "without keys it answers only on the service's own host", [])
            return
        if path not in self.paths or (not self.keys and self.buckets is None):
            await self.app(scope, receive, send)
            return
        key = self._presented_key(headers)
        if self.keys and (key is None or not self._known(key)):
            await _answer(send, 401, "unauthorized", "a valid API key is required: send it as "
                          "`Authorization: Bearer <key>` or `X-API-Key: <key>`",
                          [(b"www-authenticate", b'Bearer realm="catsdogs"')])
            return
        if self.buckets is not None:
            wait = self.buckets.take(self._client(scope, headers, key))
            if wait > 0:
                retry = max(1, math.ceil(wait))
                await _answer(send, 429, "rate_limited", f"too many requests from this client; "
                              f"retry in {retry} s", [(b"retry-after", str(retry).encode())])
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _presented_key(headers: dict[bytes, bytes]) -> str | None:
        auth = headers.get(b"authorization", b"").decode("latin-1").strip()
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip() or None
        return headers.get(b"x-api-key", b"").decode("latin-1").strip() or None

    def _known(self, key: str) -> bool:
        digest = _digest(key)
        found = False
        for known in self.keys:   # every digest compared: the time does not say which matched
            found |= hmac.compare_digest(digest, known)
        return found

    def _client(self, scope: Scope, headers: dict[bytes, bytes], key: str | None) -> str:
        if self.keys and key is not None:
            return "key:" + _digest(key)
        if self.client_header and headers.get(self.client_header):
            return "header:" + headers[self.client_header].decode("latin-1").split(",")[0].strip()
        client = scope.get("client") or ("?", 0)
        return f"addr:{client[0]}"


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip()).is_loopback
    except ValueError:
        return False


def _from_this_host(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """Whether the caller is on the service's host: a loopback connection and, when a proxy on
    this host forwarded it, a loopback `X-Real-IP` (the caller's address as our proxies set it)."""
    client = scope.get("client") or ("", 0)
    forwarded = headers.get(b"x-real-ip")
    return _loopback(client[0]) and (forwarded is None
                                     or _loopback(forwarded.decode("latin-1")))


def access_options(settings: ServingSettings) -> dict[str, Any]:
    """`ApiAccess`'s arguments from the service's settings; SystemExit when the keys file is
    set but unreadable or empty (the service must not start open by mistake)."""
    keys: frozenset[str] = frozenset()
    if settings.api_keys_file is not None:
        try:
            keys = read_keys(settings.api_keys_file)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bad service setting: CATSDOGS_API_KEYS_FILE: {exc}") from None
        log.info("API keys required on %s (%d keys)",
                 ", ".join(sorted((*API_PATHS, *REVIEW_DATA_PATHS))), len(keys))
    if settings.rate_limit_per_minute:
        log.info("rate limit: %d requests a minute per client", settings.rate_limit_per_minute)
    return {"keys": keys, "per_minute": settings.rate_limit_per_minute,
            "burst": settings.rate_limit_burst,
            "client_header": settings.rate_limit_client_header}


async def _answer(send: Send, status: int, error: str, reason: str,
                  extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": error, "reason": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})
