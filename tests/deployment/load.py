"""A load generator for rollout tests: real requests to a live endpoint through a switch."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from catsdogs.deployment.check import predict


class Load:
    """Calls `<endpoint>/predict` with `picture` (or a list of pictures, each in turn) from
    `threads` threads (pausing `pause_s`
    between calls) until stopped: a new connection a call, or with `keep_alive` one
    `requests.Session` a thread (its connection kept open between calls, as browsers and HTTP/1.1
    pools do; a POST that meets a closed connection is not retried). `failures`: every failed
    call; `versions`: the served `model.version` each time it changed; `changes`: (epoch
    seconds, version) of those changes."""

    def __init__(self, endpoint: str, picture: Path | list[Path], threads: int = 2,
                 pause_s: float = 0.0, keep_alive: bool = False) -> None:
        self.endpoint, self.pause_s = endpoint, pause_s
        self.pictures = picture if isinstance(picture, list) else [picture]
        self.keep_alive = keep_alive
        self.sent = 0
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.changes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True)
                         for _ in range(threads)]

    def _loop(self) -> None:
        session = requests.Session() if self.keep_alive else None
        uploads = [(p, {"image": (p.name, p.read_bytes(), "image/jpeg")}) for p in self.pictures]
        turn = 0
        while not self._stop.is_set():
            picture, files = uploads[turn % len(uploads)]
            turn += 1
            try:
                if session is None:
                    answer = predict(self.endpoint, picture, timeout=60)
                else:
                    response = session.post(self.endpoint.rstrip("/") + "/predict", files=files,
                                            timeout=60)
                    response.raise_for_status()
                    answer = response.json()
                version, error = answer["model"]["version"], None
            except (OSError, requests.RequestException) as exc:
                version, error = None, repr(exc)
            with self._lock:
                self.sent += 1
                if error:
                    self.failures.append(error)
                elif not self.versions or self.versions[-1] != version:
                    self.versions.append(version)
                    self.changes.append((time.time(), version))
            if self.pause_s:
                self._stop.wait(self.pause_s)
        if session is not None:
            session.close()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
