"""The public endpoint's proxy: HAProxy, the same way in the local and the compose target.

    callers -> HAProxy (public port) -> the live Bento slot (local) or colour (compose)

Traffic moves through HAProxy's runtime API (a line of text on its admin socket): no reload and
no process change, so no client connection is closed; HAProxy routes every request on its own, so
the next request on a kept-alive connection goes to the new version while requests in flight on
the old one finish there. nginx, which both targets used before, closes its idle keep-alive
connections at `nginx -s reload`, and a client that sends its next POST at that moment gets a
connection reset it does not retry (`benchmarks/switch_keepalive.py`: over 200 switches under 8
keep-alive clients nginx lost 14 requests in 8,988, HAProxy none in 32,647).

This module holds what both targets share: the limits the proxy enforces and answers in the
service's `{"error", "reason"}` JSON (docs/rollout.md, "Limits at the proxy"), the `defaults`
section, the shadow mirror's rules (`mirror_rules`; the Lua action is `mirror.lua`, beside this
module), and the header that names the slot that answered. The local target renders its whole
configuration (catsdogs.deployment.targets.local); compose's is `docker/proxy/haproxy.cfg`, which
holds `defaults()` and `limits()` verbatim (tests/deployment/test_local_proxy.py keeps them equal).
"""

from __future__ import annotations

from pathlib import Path

MIRROR_LUA = Path(__file__).with_name("mirror.lua")   # the shadow's copies (deployment.phases)
MIRROR_KEY = "shadow"           # the mirror map's one key: `host:port` of the shadow, or `off`
SLOT_HEADER = "X-Catsdogs-Slot"
HEADER_LIMIT = 16384            # bytes of request headers; more: 431
REQUEST_TIMEOUT_S = 15          # headers and the body's first buffer (64 KiB); slower: 408
PER_CLIENT_CONNECTIONS = 64     # open connections per client address; more: 429

_DEFAULTS = """\
defaults
  mode http
  option http-buffer-request
  timeout connect 5s
  timeout client 60s
  timeout http-request {timeout_s}s
  timeout http-keep-alive 60s
  timeout server 300s
"""

_LIMITS = """\
  http-request set-header X-Real-IP %[src]
  stick-table type ip size 100k expire 60s store conn_cur
  tcp-request connection track-sc0 src
  http-request return status 429 content-type application/json string '{{"error": "more than {per_client} connections open from this address, the proxy limit; retry shortly", "reason": "too_many_connections"}}' hdr x-catsdogs-reject-reason too_many_connections hdr retry-after 1 if {{ sc_conn_cur(0) gt {per_client} }}
  http-request return status 431 content-type application/json string '{{"error": "request headers larger than {header_limit} bytes, the proxy limit", "reason": "headers_too_large"}}' hdr x-catsdogs-reject-reason headers_too_large if {{ req.hdrs,length gt {header_limit} }}
  http-error status 408 content-type application/json string '{{"error": "the request did not arrive within {timeout_s} s, the proxy limit", "reason": "request_timeout"}}' hdr x-catsdogs-reject-reason request_timeout
"""


def defaults() -> str:
    """The `defaults` section: HTTP mode, bodies buffered (their first 64 KiB) before a slot is
    chosen, and every timeout."""
    return _DEFAULTS.format(timeout_s=REQUEST_TIMEOUT_S)


def limits() -> str:
    """The public frontend's limit lines (indented): the caller's address in `X-Real-IP` (what
    the service's per-client rate limit reads with CATSDOGS_RATE_LIMIT_CLIENT_HEADER=x-real-ip;
    a client's own X-Real-IP is replaced), per-client connections (429 with Retry-After), header
    size (431), and the JSON body of HAProxy's own 408 for a body that stalls. A request HAProxy
    cannot parse, headers past its 64 KiB buffer, or a head that never completes get HAProxy's
    own plain-text 400 or 408: its parser answers before any rule or error section applies."""
    return _LIMITS.format(per_client=PER_CLIENT_CONNECTIONS, header_limit=HEADER_LIMIT,
                          timeout_s=REQUEST_TIMEOUT_S)


def mirror_rules(map_file: str) -> str:
    """The public frontend's mirror lines (indented), after `limits()` so a refused request is
    never copied: the shadow's `host:port` read from `map_file` (key MIRROR_KEY, `off` when no
    shadow runs; changed at run time with `set map`), then `mirror.lua`'s action for every
    POST /predict* while it is not `off`."""
    return (f"  http-request set-var(txn.catsdogs_shadow) str({MIRROR_KEY}),map({map_file})\n"
            "  http-request lua.catsdogs_mirror if METH_POST { path_beg /predict } "
            "!{ var(txn.catsdogs_shadow) -m str off }\n")
