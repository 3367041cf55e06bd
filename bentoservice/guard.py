"""ASGI middleware in front of the API: every request shape gets a 2xx or a JSON 4xx.

For the POST endpoints it reads the body itself, once, counting while it streams (a request over
the limit is refused with 413 as soon as it gets there, Content-Length or not), parses it once and
hands the route what it found in the request's state (`UPLOADS`):

- `/predict`, `/predict_batch`, `/explain` (like `/predict`, multipart only): a multipart form whose parts are all files under the endpoint's
  field (`image`, `images`). Any other field name, a text value where the file belongs (a URL
  among them: the service never fetches what a caller names), a malformed form or another
  content type is refused here. The files' bytes go to the route (bentoservice/routes.py), in
  order. `/predict` also takes the photo as the raw body with an `image/*` or
  `application/octet-stream` Content-Type.
- `/predict_base64`: anything but a JSON object whose `image` is a string is refused with a hint;
  the string goes to the route.
- `/feedback` (a BentoML API): likewise, a JSON object whose `prediction_id` and `label` are
  strings, at most `FEEDBACK_BYTES` (the service checks the label and the id); its body is
  passed on as it came.

Every refusal leaves through `refusal_response`: `{"error", "reason"}` JSON with the reason in the
`x-catsdogs-reject-reason` header; every 4xx answer, BentoML's own validation errors included, is
counted in `catsdogs_rejected_requests_total{reason}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qs

import bentoml
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.responses import JSONResponse

logger = logging.getLogger("bentoservice.guard")

REJECT_HEADER = "x-catsdogs-reject-reason"
API_PATHS = ("/predict", "/predict_batch", "/predict_base64", "/explain", "/feedback")
REVIEW_DATA_PATHS = ("/review/queue", "/review/picture")
"""The review page's data (pictures users uploaded): behind the API keys like `API_PATHS`."""
JSON_FIELDS = {"/predict_base64": ("image",), "/feedback": ("prediction_id", "label")}
"""The JSON endpoints: the string fields their object must have."""
FEEDBACK_BYTES = 4096
EDGE_REFUSED = "catsdogs_edge_refused"  # scope["state"] key: the edge answered (and counted) it
UPLOADS = "catsdogs_uploads"
"""scope["state"] key: what the guard read for an upload route (files: list[bytes], in order;
/predict_base64: the `image` string)."""
UNLIMITED_PATHS = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})  # probes: no slot
MULTIPART_OVERHEAD = 64 * 1024
TEXT_KEPT = 200  # characters of a text value quoted back in the refusal
FILENAME_STAR = re.compile(rb";\s*filename\*\s*=", re.IGNORECASE)
URL_LIKE = re.compile(r"^\s*[\"']?([a-z][a-z0-9+.-]*://|data:)", re.IGNORECASE)
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*", b"BM")

REJECTED = bentoml.metrics.Counter(
    name="catsdogs_rejected_requests",
    documentation="Requests refused with a 4xx (and the edge's 503 for one connection too "
                  "many), by reason",
    labelnames=["reason"])

_T = TypeVar("_T")
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOW = {
    "/predict": "send the photo as multipart file field `image` (curl -F image=@cat.jpg "
                "URL/predict) or as the raw body with its image/* Content-Type",
    "/predict_batch": "send the photos as repeated multipart file fields `images` (curl -F "
                      "images=@cat.jpg -F images=@dog.jpg URL/predict_batch)",
    "/predict_base64": "send JSON {\"image\": \"<base64 of the file>\"} with Content-Type "
                       "application/json",
    "/explain": "send the photo as multipart file field `image` (curl -F image=@cat.jpg "
                "URL/explain -o heatmap.png)",
    "/feedback": "send JSON {\"prediction_id\": \"<an answer's prediction_id>\", \"label\": "
                 "\"cat\" | \"dog\" | \"neither\"} with Content-Type application/json",
}
FIELD = {"/predict": "image", "/predict_batch": "images", "/explain": "image"}
ONE_FILE = {"/predict": "send one photo per /predict request, or several to /predict_batch",
            "/explain": "send one photo per /explain request"}


class Refusal(Exception):
    """A request refused (by the guard or a route): status, machine-readable reason, message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def refusal_response(refusal: Refusal, log: bool = True) -> JSONResponse:
    """The answer to every refusal: `{"error": message, "reason": reason}` with the refusal's
    status and the reason in `REJECT_HEADER`; logged with its reason and status only (the refused
    content, a URL or a text, stays out of the log) unless `log` is False (the edge did it)."""
    if log:
        logger.info("refused a request: %s (%d)", refusal.reason, refusal.status,
                    extra={"reason": refusal.reason, "status": refusal.status})
    return JSONResponse({"error": str(refusal), "reason": refusal.reason},
                        status_code=refusal.status, headers={REJECT_HEADER: refusal.reason})


def looks_like_url(text: str) -> bool:
    """True for `scheme://...` and `data:` strings (what BentoML would try to download)."""
    return URL_LIKE.match(text) is not None


def url_refusal(where: str, text: str, path: str) -> Refusal:
    return Refusal(400, "url_not_accepted", f"{where} holds a URL ({text[:TEXT_KEPT]!r}); the "
                   f"service never fetches URLs: {HOW[path]}")


@dataclass
class _Part:
    name: str = ""
    size: int = 0
    text: bytearray = field(default_factory=bytearray)
    data: list[bytes] | None = None   # a file part's chunks (None: a text part)


class _FormCheck:
    """Streams a multipart body through python-multipart (the parser Starlette uses) and keeps
    the file parts of the endpoint's field; refuses anything else as soon as it shows."""

    def __init__(self, path: str, boundary: bytes, max_files: int) -> None:
        self.path = path
        self.field = FIELD[path]
        self.max_files = max_files
        self.parts: list[_Part] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._part_type = b""
        self._boundary = boundary
        self.parser: MultipartParser | None = None

    def start(self) -> None:
        """Build the parser (python-multipart refuses a boundary over 256 characters here)."""
        self.parser = self._parsing(lambda: MultipartParser(self._boundary, {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_val, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._end}))

    def write(self, chunk: bytes) -> None:
        assert self.parser is not None, "start() first"
        self._parsing(lambda: self.parser.write(chunk))

    def _parsing(self, step: Callable[[], _T]) -> _T:
        """`step()`, its parse errors (of any kind python-multipart raises) as a 400 refusal."""
        try:
            return step()
        except (FormParserError, ValueError) as exc:
            raise Refusal(400, "bad_multipart", f"the multipart form is malformed ({exc}); "
                          f"{HOW[self.path]}") from None

    def finish(self) -> None:
        self.write(b"")
        assert self.parser is not None
        if self.parser.state != MultipartState.END:
            raise Refusal(400, "bad_multipart", "the multipart form ends early (no closing "
                          f"boundary); {HOW[self.path]}")
        if not self.parts:
            raise Refusal(400, "empty", f"the form has no field `{self.field}`; {HOW[self.path]}")

    def files(self) -> list[bytes]:
        """The file parts' bytes, in order (after `finish`)."""
        return [b"".join(p.data) for p in self.parts if p.data is not None]

    def _begin(self) -> None:
        self._disposition = b""
        self._part_type = b""
        self.parts.append(_Part())

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        name = bytes(self._header_name).lower()
        if name == b"content-disposition":
            self._disposition = bytes(self._header_value)
        elif name == b"content-type":
            self._part_type = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_done(self) -> None:
        part = self.parts[-1]
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise Refusal(400, "bad_multipart", "a form part has no Content-Disposition name; "
                          f"{HOW[self.path]}")
        part.name = options[b"name"].decode("utf-8", "replace")
        if part.name != self.field:
            raise Refusal(400, "invalid_request", f"field `{part.name[:TEXT_KEPT]}` is not accepted "
                          f"here; {HOW[self.path]}")
        if self._is_file(options):
            part.data = []
            if sum(p.data is not None for p in self.parts) > self.max_files:
                raise Refusal(400, "too_many_images", f"field `{self.field}` holds more than "
                              f"{self.max_files} file(s); " + ONE_FILE.get(
                                  self.path, "the limit is CATSDOGS_MAX_BATCH_IMAGES"))

    def _is_file(self, options: dict[bytes, bytes]) -> bool:
        """A file part: a `filename`, an RFC 5987 `filename*` alone (python-multipart's header
        parser drops it), or no file name but an `image/*` part type (.NET's
        `MultipartFormDataContent.Add(content, "image")`)."""
        media, _ = parse_options_header(self._part_type)
        return (b"filename" in options or FILENAME_STAR.search(self._disposition) is not None
                or media.lower().startswith(b"image/"))

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if part.data is not None:
            part.data.append(data[start:end])
        elif len(part.text) < TEXT_KEPT:
            part.text += data[start:min(end, start + TEXT_KEPT)]

    def _end(self) -> None:
        part = self.parts[-1]
        if part.data is None:
            self._refuse_text(part)

    def _refuse_text(self, part: _Part) -> None:
        text = part.text.decode("utf-8", "replace")
        if looks_like_url(text):
            raise url_refusal(f"field `{self.field}`", text, self.path)
        raise Refusal(400, "not_a_file", f"field `{self.field}` was sent as a text value "
                      f"({part.size} bytes), not as a file; {HOW[self.path]} (with curl: "
                      f"-F {self.field}=@photo.jpg, not {self.field}=<photo.jpg)")


class RequestGuard:
    """Streaming size limits, request-shape checks, request slots and `{"error", "reason"}`
    answers (module docstring). Limits: `max_upload_bytes` per picture (plus base64 and form
    overhead), `max_batch_images` files per /predict_batch request, `request_slots` requests
    handled at once (an upload takes its slot once its body is read: a client that stalls half
    way holds none; the edge, bentoservice/edge.py, bounds how long it may stall)."""

    def __init__(self, app: Any, max_upload_bytes: int, max_batch_images: int,
                 request_slots: int) -> None:
        self.app = app
        self.request_slots = request_slots
        self.slots = asyncio.Semaphore(request_slots)
        single = max_upload_bytes * 4 // 3 + MULTIPART_OVERHEAD  # base64 inflates by 4/3
        self.limits = {"/predict": single, "/predict_base64": single, "/explain": single,
                       "/predict_batch": single * max_batch_images, "/feedback": FEEDBACK_BYTES}
        self.max_files = {"/predict": 1, "/predict_batch": max_batch_images, "/explain": 1}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if path not in API_PATHS:
            await self._in_slot(scope, receive, send)
            return
        if scope.get("method") != "POST":
            await self._in_slot(scope, receive, self._json_errors(send, path))
            return
        try:
            receive = await self._checked(scope, receive, path)
        except Refusal as refusal:
            # a stalled upload the edge closed was answered and counted there; the answer is
            # still sent (to a closed connection: dropped) so that BentoML's request timeout,
            # which waits for an answer, lets the request go at once rather than after 120 s
            counted = refusal.reason == "disconnected" and bool(
                (scope.get("state") or {}).get(EDGE_REFUSED))
            await self._refuse(send, refusal, count=not counted)
            return
        await self._in_slot(scope, receive, self._json_errors(send, path))

    async def _in_slot(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app in a request slot; 429 `busy` when every slot is taken."""
        if self.slots.locked():
            await self._refuse(send, Refusal(
                429, "busy", f"the service is handling {self.request_slots} requests, its limit "
                "(CATSDOGS_REQUEST_SLOTS); retry shortly"))
            return
        async with self.slots:
            await self.app(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, path: str) -> Receive:
        """Read and check the body: an upload route's files or string go to
        `scope["state"][UPLOADS]`; the `receive` the app then reads (the body replayed for
        /feedback, nothing for the upload routes); or a `Refusal`."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) == 0:
            raise Refusal(400, "empty", f"the request body is empty; {HOW[path]}")
        if length.isdigit() and int(length) > self.limits[path]:
            raise self._too_large(path, f"the request is {int(length)} bytes")
        media, options = parse_options_header(headers.get("content-type", ""))
        media = media.lower()
        if path in JSON_FIELDS:
            if media.startswith(b"multipart/"):
                raise Refusal(415, "unsupported_media_type", f"{path} takes JSON, not a form; "
                              f"{HOW[path]}" + (" (or post the form to /predict)"
                                                if path == "/predict_base64" else ""))
            body = await self._read_all(receive, path)
            value = self._check_json(body, path)
            if path != "/predict_base64":
                return _replay(body)
            uploads: list[bytes] | str = value["image"]
        elif media == b"multipart/form-data":
            if not options.get(b"boundary"):
                raise Refusal(400, "bad_multipart", f"the multipart Content-Type has no "
                              f"boundary; {HOW[path]}")
            check = _FormCheck(path, options[b"boundary"], self.max_files[path])
            check.start()
            await self._stream(receive, path, check.write)
            check.finish()
            uploads = check.files()
        elif path == "/predict" and (media.startswith(b"image/")
                                     or media == b"application/octet-stream"):
            uploads = [await self._read_all(receive, path)]
        else:
            body = await self._read_all(receive, path)
            self._refuse_other_body(body, media.decode("latin-1"), path)
        scope.setdefault("state", {})[UPLOADS] = uploads
        return _replay(b"")

    async def _stream(self, receive: Receive, path: str, sink: Callable[[bytes], Any]) -> int:
        """Feed the body to `sink` chunk by chunk; 413 as soon as it passes the limit."""
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refusal(400, "disconnected", "the client went away before the body was "
                              "sent")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits[path]:
                raise self._too_large(path, f"the request passed {self.limits[path]} bytes")
            if chunk:
                sink(chunk)
            if not message.get("more_body", False):
                if size == 0:
                    raise Refusal(400, "empty", f"the request body is empty; {HOW[path]}")
                return size

    async def _read_all(self, receive: Receive, path: str) -> bytes:
        chunks: list[bytes] = []
        await self._stream(receive, path, chunks.append)
        return b"".join(chunks)

    def _too_large(self, path: str, what: str) -> Refusal:
        return Refusal(413, "too_large", f"{what}; the limit for {path} is {self.limits[path]} "
                       "bytes (CATSDOGS_MAX_UPLOAD_BYTES per picture, plus encoding overhead)")

    @staticmethod
    def _check_json(body: bytes, path: str) -> dict[str, Any]:
        """The body's JSON object, whose `JSON_FIELDS[path]` are strings; else a `Refusal`."""
        if body.startswith(IMAGE_MAGIC):
            raise Refusal(400, "invalid_request", "the body is a raw image file, not JSON; "
                          f"{HOW[path]}" + (", or post the raw file to /predict"
                                            if path == "/predict_base64" else ""))
        if not body.lstrip().startswith(b"{"):
            raise Refusal(400, "invalid_request", f"the body is not a JSON object; {HOW[path]}")
        try:
            value = json.loads(body)
        except RecursionError:
            raise Refusal(400, "invalid_request", f"the JSON nests too deep; {HOW[path]}"
                          ) from None
        except ValueError as exc:  # UnicodeDecodeError included
            raise Refusal(400, "invalid_request", f"the body is not valid JSON ({exc}); "
                          f"{HOW[path]}") from None
        for name in JSON_FIELDS[path]:
            if not isinstance(value.get(name), str):  # a dict: the body starts with "{"
                found = type(value[name]).__name__ if name in value else f"no field `{name}`"
                what = "a string of base64" if name == "image" else "a string"
                raise Refusal(400, "invalid_request", f"`{name}` must be {what} (got {found}); "
                              f"{HOW[path]}")
        return value

    @staticmethod
    def _refuse_other_body(body: bytes, media: str, path: str) -> NoReturn:
        """A body /predict or /predict_batch does not take: url_not_accepted when it names a URL
        (raw, as JSON `{"image": URL}` or as a URL-encoded form value), else 415."""
        field_name = FIELD[path]
        text = body[:TEXT_KEPT].decode("utf-8", "replace")
        if media == "application/x-www-form-urlencoded":
            values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(field_name)
            text = values[0] if values else text
        elif body.lstrip().startswith(b"{"):
            try:
                value = json.loads(body)
            except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
                value = None
            found = value.get(field_name) if isinstance(value, dict) else None
            texts = found if isinstance(found, list) else [found]
            text = next((t for t in texts if isinstance(t, str) and looks_like_url(t)), text)
        if looks_like_url(text):
            raise url_refusal("the request", text, path)
        raw = " (it looks like a raw image file)" if body.startswith(IMAGE_MAGIC) else ""
        raise Refusal(415, "unsupported_media_type", f"{path} does not take a body of type "
                      f"{media or '(none given)'}{raw}; {HOW[path]}"
                      + ("; JSON with base64 goes to /predict_base64" if path == "/predict"
                         else ""))

    def _json_errors(self, send: Send, path: str) -> Send:
        """`send` that counts 4xx answers and rewrites any that is not `{"error", "reason"}`."""
        held: list[Message] = []

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                           for k, v in message.get("headers", [])}
                if 400 <= status < 500 and REJECT_HEADER not in headers:
                    held.append(message)
                    return
                if 400 <= status < 500:
                    REJECTED.labels(reason=headers[REJECT_HEADER]).inc()
                await send(message)
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if not message.get("more_body", False):
                    await self._refuse(send, _as_refusal(held, path))
                return
            await send(message)

        return guarded_send

    @staticmethod
    async def _refuse(send: Send, refusal: Refusal, count: bool = True) -> None:
        """Answer `refusal` as `{"error", "reason"}`; counted and logged unless `count` is
        False (the edge did both already)."""
        if count:
            REJECTED.labels(reason=refusal.reason).inc()
        response = refusal_response(refusal, log=count)
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


REASON_BY_STATUS = {405: "method_not_allowed", 415: "unsupported_media_type"}


def _as_refusal(held: list[Message], path: str) -> Refusal:
    """BentoML's own 4xx (validation errors, wrong method) in the documented shape."""
    status = held[0]["status"]
    raw = b"".join(m.get("body", b"") for m in held[1:])
    try:
        found: Any = json.loads(raw)
    except ValueError:
        found = raw.decode("utf-8", "replace").strip()
    if isinstance(found, list) and len(found) == 1:
        found = found[0]
    if isinstance(found, dict):
        problems = "; ".join(f"{'.'.join(map(str, d.get('loc', ()))) or 'body'}: {d.get('msg')}"
                             for d in found.get("detail") or () if isinstance(d, dict))
        found = f"{found.get('error', 'invalid request')}" + (f" ({problems})" if problems else "")
    hint = "use POST; " + HOW[path] if status == 405 else HOW[path]
    return Refusal(status, REASON_BY_STATUS.get(status, "invalid_request"), f"{found}; {hint}")


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
