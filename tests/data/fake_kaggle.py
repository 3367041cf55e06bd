"""A fake Kaggle API on loopback that the real `kaggle` client talks to.

How the real client reaches it: `kaggle` 2.2's `KaggleApi` ignores `KAGGLE_API_ENVIRONMENT=TEST`
(it builds its kagglesdk client with an explicit environment) but honours
`KAGGLE_API_ENVIRONMENT=LOCALHOST` (read when `kaggle` is imported), which sends every call to
`http://localhost/api/v1/...` on port 80. Instead of needing port 80, the client's process gets
`HTTP_PROXY=http://127.0.0.1:<free port>`: `requests` then hands those plain-HTTP calls to this
server, which answers them as the API would. Nothing in the client is patched.
This server answers the one call ingest makes, `datasets.DatasetApiService/DownloadDataset`.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DOWNLOAD_PATH = "/api/v1/datasets.DatasetApiService/DownloadDataset"


@dataclass
class FakeKaggle:
    """What to serve, and what the client sent."""

    username: str
    key: str
    datasets: dict[str, bytes] = field(default_factory=dict)  # "owner/slug" -> zip bytes
    port: int = 0  # set by serve()
    stall_after_half: bool = False  # send half the body, then hang (an interrupted download)
    requests: list[dict[str, object]] = field(default_factory=list)
    half_sent: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def make_handler(state: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _json(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            url = urlsplit(self.path)  # proxied: an absolute URL
            state.requests.append({"host": url.hostname, "path": url.path, "body": body,
                                   "auth": self.headers.get("Authorization", "")})
            expected = "Basic " + base64.b64encode(
                f"{state.username}:{state.key}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._json(401, {"code": 401, "message": "Unauthenticated"})
                return
            if url.hostname != "localhost" or url.path != DOWNLOAD_PATH:
                self._json(404, {"code": 404, "message": f"no route {self.path}"})
                return
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref not in state.datasets:
                self._json(404, {"code": 404, "message": f"Dataset {ref} not found"})
                return
            data = state.datasets[ref]
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if state.stall_after_half:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                state.half_sent.set()
                state.release.wait(60)
                return
            self.wfile.write(data)

    return Handler


def serve(state: FakeKaggle) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start the server on a free loopback port in a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    state.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
