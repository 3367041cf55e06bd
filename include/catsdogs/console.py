"""Logging set-up and progress reporting for the CLI.

On a terminal, `progress` shows a tqdm bar. Elsewhere (Airflow task logs, CI, docker logs) a bar
is noise, yet a silent 10-minute loop looks hung: there `Progress` logs one line every
`LOG_EVERY_S` seconds (done/total, rate, ETA and an optional note such as the loss).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

NOISY_LOGGERS = ("great_expectations", "mlflow", "alembic", "urllib3", "matplotlib", "PIL", "bentoml")
LOG_EVERY_S = 30.0

log = logging.getLogger("catsdogs.progress")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts work done; a tqdm bar on a terminal, else a log line every `interval` seconds.

    `update(n, note)` adds `n` units (e.g. images of a batch); `note` (e.g. "loss 0.31") is
    appended to the next line. `total` may be None (no ETA). Use as a context manager or call
    `close()`.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "img",
                 interval: float | None = None, terminal: bool | None = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.interval = LOG_EVERY_S if interval is None else interval
        self.done, self.note = 0, ""
        self.started = self.last_log = time.monotonic()
        self._bar = None
        if sys.stderr.isatty() if terminal is None else terminal:
            from tqdm import tqdm

            self._bar = tqdm(desc=desc, total=total, unit=unit, leave=False)

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.note = note or self.note
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_log >= self.interval:
            self.last_log = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """`desc: done/total unit, rate unit/s, ETA h:mm:ss, note`."""
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.desc}: {self.done}" + (f"/{self.total}" if self.total else "")
                 + f" {self.unit}", f"{rate:.1f} {self.unit}/s"]
        if self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], desc: str, total: int | None = None,
             unit: str = "img") -> Iterator[T]:
    """Yield `items`, counting one unit each (see `Progress`)."""
    with Progress(desc, total, unit) as counter:
        for item in items:
            yield item
            counter.update()


@contextlib.contextmanager
def heartbeat(desc: str, status: Callable[[], str], interval: float | None = None
              ) -> Iterator[None]:
    """For work without a loop of its own (a client library's download): log `desc: status()`
    every `interval` seconds (default `LOG_EVERY_S`) from a background thread while the block
    runs."""
    stop = threading.Event()
    period = LOG_EVERY_S if interval is None else interval

    def beat() -> None:
        started = time.monotonic()
        while not stop.wait(period):
            try:
                now = status()
            except OSError as exc:  # e.g. a file the status reads vanished meanwhile
                now = f"status unavailable ({exc})"
            log.info("%s: %s after %s", desc, now, _duration(time.monotonic() - started))

    thread = threading.Thread(target=beat, name=f"heartbeat {desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
