"""ASGI middleware in front of the API: refuses oversized uploads before they are read, turns
malformed requests into JSON 4xx answers, and counts every refusal in
`catsdogs_rejected_requests_total{reason}`."""

from __future__ import annotations

import json
from typing import Any

import bentoml

REJECT_HEADER = "x-catsdogs-reject-reason"
API_PATHS = ("/predict", "/predict_batch", "/predict_base64")
MULTIPART_OVERHEAD = 64 * 1024

REJECTED = bentoml.metrics.Counter(
    name="catsdogs_rejected_requests", documentation="Requests refused with a 4xx, by reason",
    labelnames=["reason"])

Scope = dict[str, Any]


class RequestGuard:
    """Body-size limit from Content-Length, empty-body check, rejection counting."""

    def __init__(self, app: Any, max_upload_bytes: int, max_batch_images: int) -> None:
        self.app = app
        single = max_upload_bytes * 4 // 3 + MULTIPART_OVERHEAD  # base64 inflates by 4/3
        self.limits = {"/predict": single, "/predict_base64": single,
                       "/predict_batch": single * max_batch_images}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in API_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope, path)
        if refusal is not None:
            await self._refuse(send, *refusal)
            return
        counted = False

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                status = message["status"]
                if 400 <= status < 500:
                    headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
                    REJECTED.labels(reason=headers.get(REJECT_HEADER, "invalid_request")).inc()
            await send(message)

        await self.app(scope, receive, counting_send)

    def _refusal(self, scope: Scope, path: str) -> tuple[int, str, str] | None:
        if scope.get("method") != "POST":
            return None
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit():
            size = int(length)
            if size == 0:
                return 400, "empty", ("the request body is empty; send the photo as multipart "
                                      "field `image` (or JSON {\"image\": \"<base64>\"} to "
                                      "/predict_base64)")
            if size > self.limits[path]:
                return 413, "too_large", (f"the request is {size} bytes; the limit is "
                                          f"{self.limits[path]} (CATSDOGS_MAX_UPLOAD_BYTES)")
        return None

    async def _refuse(self, send: Any, status: int, reason: str, message: str) -> None:
        REJECTED.labels(reason=reason).inc()
        body = json.dumps({"error": message, "reason": reason}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (REJECT_HEADER.encode(), reason.encode())]})
        await send({"type": "http.response.body", "body": body})
