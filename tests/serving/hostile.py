"""Hostile and slow HTTP clients on raw sockets (tests/serving/test_hostile_clients.py and
benchmarks/slow_clients.py): half-sent uploads, stalled heads, one raw exchange timed, and
normal uploads timed while an attack holds its connections."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

BOUNDARY = b"hostileclientboundary"


@dataclass(frozen=True)
class Answer:
    """One HTTP answer read off a raw socket: status (0: none, the connection was closed or the
    read timed out), headers (lower-case names), body, and seconds from the first byte sent to
    the answer read."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def form(photo: bytes, field: str = "image") -> bytes:
    """A multipart/form-data body with `photo` as file field `field` (boundary `BOUNDARY`)."""
    return (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"" + field.encode()
            + b"\"; filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n" + photo
            + b"\r\n--" + BOUNDARY + b"--\r\n")


def upload_head(path: str, length: int) -> bytes:
    """The request line and headers of a multipart upload of `length` body bytes."""
    return (f"POST {path} HTTP/1.1\r\nHost: catsdogs\r\nContent-Type: multipart/form-data; "
            f"boundary={BOUNDARY.decode()}\r\nContent-Length: {length}\r\n\r\n").encode()


class AnswerReader:
    """Answers read one by one off `sock` (bytes past one answer are kept for the next: a
    server answering pipelined requests may send several in one segment)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.pending += chunk
        return bool(chunk)

    def read(self, started: float) -> Answer:
        """The next answer (headers, then Content-Length bytes), timed from `started`; status 0
        when the connection ends or the read times out first."""
        try:
            while b"\r\n\r\n" not in self.pending:
                if not self._more():
                    return Answer(0, {}, self.pending, time.perf_counter() - started)
            head, _, self.pending = self.pending.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(self.pending) < length and self._more():
                pass
            body, self.pending = self.pending[:length], self.pending[length:]
            return Answer(int(lines[0].split()[1]), headers, body, time.perf_counter() - started)
        except (TimeoutError, ConnectionError):
            return Answer(0, {}, self.pending, time.perf_counter() - started)


def exchange(url: str, chunks: list[bytes], timeout: float = 150.0, answers: int = 1
             ) -> list[Answer]:
    """Connect, send `chunks` (a failed send, the server having closed, is not an error), read
    `answers` answers in order; each timed from the first byte sent."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        started = time.perf_counter()
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                sock.sendall(chunk)
        reader = AnswerReader(sock)
        found = [reader.read(started)]
        while len(found) < answers and found[-1].status:
            found.append(reader.read(started))
        return found


@contextlib.contextmanager
def half_sent_uploads(url: str, count: int, body_bytes: int = 200_000, sent_bytes: int = 100_000
                      ) -> Iterator[list[socket.socket]]:
    """`count` connections that each sent an upload's full headers (Content-Length `body_bytes`)
    and `sent_bytes` of its body, then stall; closed when the block ends."""
    host_port = address(url)
    body = form(b"\xff\xd8\xff" + b"\0" * (body_bytes - 300))[:body_bytes]
    head = upload_head("/predict", len(body))
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(host_port, timeout=30)
            sockets.append(sock)
            sock.sendall(head + body[:sent_bytes])
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def timed_uploads(url: str, photo: bytes, count: int, timeout: float = 60.0
                  ) -> list[tuple[int, float]]:
    """`count` normal uploads to /predict one after another: (status, seconds) each."""
    found = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            response = session.post(f"{url}/predict", files={"image": ("photo.jpg", photo)},
                                    timeout=timeout)
            found.append((response.status_code, time.perf_counter() - started))
    return found


def percentile(values: list[float], q: float) -> float:
    """The `q` (0-100) percentile of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]
