"""Logging set-up and progress reporting for the CLI and the service.

Log lines are one readable line each (`text`, for interactive use) or one JSON object each
(`json`, `LoggingSettings.log_format`; compose sets it so Alloy ships them to Loki, docs/logs.md):
`{"timestamp", "level", "logger", "message", ...fields}`, where the fields are those bound with
`bind_log_fields` (a stage: `stage`, `dag_id`, `run_id`; the service: `model`, `model_version`,
`model_run_id`) and any `extra=` of the call. In both formats the values of secret-named
environment variables and the secrets `SECRET_PATTERNS` matches are masked (`redact`): a log
line never carries a password, key or token.

On a terminal, `progress` shows a tqdm bar. Elsewhere (Airflow task logs, CI, docker logs) a bar
is noise, yet a silent 10-minute loop looks hung: there `Progress` logs one line every
`LOG_EVERY_S` seconds (done/total, rate, ETA and an optional note such as the loss).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from catsdogs.settings import LoggingSettings, load

T = TypeVar("T")

NOISY_LOGGERS = ("great_expectations", "mlflow", "alembic", "urllib3", "matplotlib", "PIL", "bentoml")
LOG_EVERY_S = 30.0

log = logging.getLogger("catsdogs.progress")


MASK = "***"
# RE2-compatible patterns (no look-around) with one group each: the secret, replaced by MASK in
# every match. docker/alloy/config.alloy's `stage.replace` stages redact with these same
# expressions in what Alloy ships to Loki (tests/monitoring/test_logs_stack.py holds them equal
# and runs them under RE2, Alloy's regex engine).
SECRET_PATTERNS: tuple[str, ...] = (
    # a URL's password: scheme://user:PASSWORD@host (the user may be empty: redis://:pw@redis)
    r"://[^:/@\s]*:([^@/\s]+)@",
    # key=value, key: value, "key": "value" for secret-named keys (KAGGLE_KEY=..., "password": ...)
    # (also JSON-escaped inside a JSON line's message: \"password\": \"...\")
    r"(?i)(?:password|passwd|secret|token|api_key|kaggle_key)[\w.-]*\\?\"?\s*[:=]\s*\\?[\"']?"
    r"([^\s\\\"',;&]+)",
    # an HTTP Authorization header's credentials
    r"(?i)\b(?:bearer|basic)\s+([A-Za-z0-9._~+/=-]{8,})",
)
_COMPILED = tuple(re.compile(pattern) for pattern in SECRET_PATTERNS)
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|_key)$")
MIN_SECRET_CHARS = 8  # shorter values ("admin") would mask ordinary words


def secret_values() -> tuple[str, ...]:
    """Values (at least `MIN_SECRET_CHARS` long) of the environment variables whose names end like
    a secret (`..._PASSWORD`, `..._SECRET`, `..._TOKEN`, `..._KEY`), longest first."""
    found = {value for name, value in os.environ.items()
             if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_CHARS}
    return tuple(sorted(found, key=len, reverse=True))


def _mask_group(found: re.Match[str]) -> str:
    start, end = found.span(1)
    whole = found.group(0)
    return whole[:start - found.start()] + MASK + whole[end - found.start():]


def redact(text: str, values: tuple[str, ...] = ()) -> str:
    """`text` with each of `values` masked, then the group of each `SECRET_PATTERNS` match."""
    for value in values:
        text = text.replace(value, MASK)
    for pattern in _COMPILED:
        text = pattern.sub(_mask_group, text)
    return text


_FIELDS: dict[str, str] = {}


def bind_log_fields(**fields: object) -> None:
    """Add `fields` to every record of this process from now on (`None` or "" removes one)."""
    for name, value in fields.items():
        if value is None or value == "":
            _FIELDS.pop(name, None)
        else:
            _FIELDS[name] = str(value)


class _BoundFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _FIELDS.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, secrets masked."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


def json_formatter(secrets: tuple[str, ...]) -> logging.Formatter:
    """One JSON object a line (python-json-logger): timestamp (ISO 8601, UTC), level, logger,
    message, the bound fields and any `extra=`; `exc_info` as the formatted traceback; secrets
    masked."""
    from pythonjsonlogger.json import JsonFormatter

    class _Json(JsonFormatter):
        def format(self, record: logging.LogRecord) -> str:
            return redact(super().format(record), secrets)

    return _Json("%(levelname)s %(name)s %(message)s", timestamp=True,
                 rename_fields={"levelname": "level", "name": "logger"})


def log_handler(log_format: str | None = None) -> logging.Handler:
    """A stderr handler writing `log_format` (`text` | `json`; None: `LoggingSettings`), with the
    bound fields, masking the secrets of the environment as it is now."""
    log_format = log_format or load(LoggingSettings).log_format
    secrets = secret_values()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter(secrets) if log_format == "json"
                         else TextFormatter(secrets))
    handler.addFilter(_BoundFields())
    return handler


def setup_logging(verbose: bool = False, log_format: str | None = None, **fields: Any) -> None:
    """The root logger at INFO (DEBUG when `verbose`) on `log_handler(log_format)`, with `fields`
    bound (`bind_log_fields`); chatty libraries at WARNING unless `verbose`.

    Raises `SettingsError` for a bad `CATSDOGS_LOG_FORMAT`."""
    handler = log_handler(log_format)
    bind_log_fields(**fields)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
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
