"""Shutdown as Kubernetes does it (docs/kubernetes.md, "Draining on shutdown"), on a served model:
SIGTERM to `bentoml serve`'s main process (a container's PID 1) with an upload in flight. Without
draining, the model process stops with the API process and the upload is answered 503; with the
chart's preStop hook (catsdogs.deployment.drain) run first, /readyz fails, the hook waits for the
upload to finish, and it is answered 200."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from catsdogs.deployment.drain import drain
from tests.serving.conftest import BentoServer, serve_tiny
from tests.serving.images import encode, picture

pytestmark = pytest.mark.services
BOUNDARY = "catsdogsdrain"


def _upload() -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"'
            "\r\nContent-Type: image/png\r\n\r\n").encode() + encode(picture(3), "PNG") + \
        f"\r\n--{BOUNDARY}--\r\n".encode()


def _start_upload(server: BentoServer, body: bytes) -> socket.socket:
    """A /predict whose head and first half of the body are sent (the rest is not)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=60)
    conn.sendall((f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
                  f"boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\nConnection: close"
                  "\r\n\r\n").encode() + body[: len(body) // 2])
    time.sleep(0.5)
    return conn


def _finish(conn: socket.socket, body: bytes) -> bytes:
    """Send the rest of the body; the status line of the answer."""
    with conn:
        conn.sendall(body[len(body) // 2:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def test_without_draining_sigterm_fails_the_request_in_flight(mlflow_server: str,
                                                               tmp_path: Path) -> None:
    """Control: why the chart needs the hook (bentoml serve stops both processes at once)."""
    body = _upload()
    with serve_tiny(mlflow_server, tmp_path, model_name="CatsDogsDrainTest") as server:
        conn = _start_upload(server, body)
        os.kill(server.pid, signal.SIGTERM)
        time.sleep(2)
        assert _finish(conn, body) == b"HTTP/1.1 503 Service Unavailable"


def test_the_drain_hook_lets_the_request_in_flight_finish(mlflow_server: str,
                                                          tmp_path: Path) -> None:
    body = _upload()
    drain_file = tmp_path / "draining"
    with serve_tiny(mlflow_server, tmp_path, model_name="CatsDogsDrainTest",
                    extra_env={"CATSDOGS_DRAIN_FILE": str(drain_file)}) as server:
        conn = _start_upload(server, body)
        status: list[bytes] = []
        finisher = threading.Timer(3.0, lambda: status.append(_finish(conn, body)))
        finisher.start()
        result = drain(drain_file, f"{server.url}/metrics", probe_s=1.0, longest_s=60.0)
        readyz = requests.get(f"{server.url}/readyz", timeout=30).status_code
        os.kill(server.pid, signal.SIGTERM)   # what the kubelet sends once the hook returns
        finisher.join(timeout=60)
    assert readyz == 503
    # the hook waited for the upload (in progress from its head on) and only for it
    assert result["outcome"] == "idle" and result["left"] == 0, result
    assert 1.0 <= float(result["waited_s"]) < 30, result
    assert status == [b"HTTP/1.1 200 OK"]
