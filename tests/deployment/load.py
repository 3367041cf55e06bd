"""A load generator for rollout tests: real requests to a live endpoint through a switch."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from catsdogs.deployment.check import predict


class Load:
    """Calls `<endpoint>/predict` with `picture` from `threads` threads (pausing `pause_s`
    between calls) until stopped. `failures`: every failed call; `versions`: the served
    `model.version` each time it changed; `changes`: (epoch seconds, version) of those changes."""

    def __init__(self, endpoint: str, picture: Path, threads: int = 2,
                 pause_s: float = 0.0) -> None:
        self.endpoint, self.picture, self.pause_s = endpoint, picture, pause_s
        self.sent = 0
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.changes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True)
                         for _ in range(threads)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                version = predict(self.endpoint, self.picture, timeout=60)["model"]["version"]
                error = None
            except OSError as exc:
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

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
