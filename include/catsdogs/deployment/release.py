"""What every deployment target shares, below the targets and the image builder: the `Release`
to roll out, the `Target` protocol each target implements, `Skipped`, and the HTTP readiness
helpers (`http_status`, `wait_ready`). No third-party import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from catsdogs.errors import UserError


@dataclass(frozen=True)
class Release:
    """A registered model version to roll out (`model_uri` is `models:/<name>/<version>`)."""

    name: str
    version: str

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Skipped(Exception):
    """The target cannot deploy here (for example no kube context); the message says why."""


class Target(Protocol):
    """One place the service runs. `preflight` checks everything the rollout needs before any
    work or any change to traffic (UserError naming what is missing, Skipped when the target is
    not available here). `deploy` starts `release`, waits until it is ready, moves traffic to
    it, drains and stops the previous one, and returns facts for the summary (seconds, image,
    bytes added...); it raises UserError when the new version never became ready (traffic then
    stays where it was, and what it started is stopped) and Skipped when the target is not
    available."""

    name: str

    def preflight(self) -> None:
        ...

    def endpoint(self) -> str:
        """The live endpoint's base URL, as callers reach it (through the proxy)."""
        ...

    def serving(self) -> str | None:
        """The registry version live now, or None when nothing serves."""
        ...

    def deploy(self, release: Release) -> dict[str, Any]:
        ...


def http_status(url: str, timeout: float = 5.0) -> int | None:
    """The HTTP status of a GET (no proxies), or None when nothing answered."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def scrape(url: str, what: str, attempts: int = 3, timeout: float = 10.0) -> str:
    """The body of a GET of `url` (a staged version's /metrics; no proxies). A try that does not
    answer within `timeout` seconds is repeated on a new connection, `attempts` tries in all: a
    busy 2-core host has stalled one connection for 30 s while the slot kept answering others.
    Raises UserError naming `what` when no try answered."""
    import logging
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    attempt = 1
    while True:
        try:
            with opener.open(url, timeout=timeout) as response:
                return response.read().decode()
        except OSError as exc:
            if attempt >= attempts:
                raise UserError(f"{what} {url} did not answer {attempts} tries of "
                                f"{timeout:.0f} s: {exc}") from None
            logging.getLogger(__name__).warning("%s %s: try %d of %d failed (%s); trying again",
                                                what, url, attempt, attempts, exc)
            attempt += 1


def wait_ready(url: str, timeout: float, alive: Any = None, what: str = "the new version") -> float:
    """Poll `url` (a /readyz) until it answers 200; the seconds it took. Raises UserError when
    `timeout` seconds pass or `alive()` turns False (the process or container exited)."""
    import time

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if http_status(url) == 200:
            return time.monotonic() - started
        if alive is not None and not alive():
            raise UserError(f"{what} exited before {url} answered 200")
        time.sleep(0.5)
    raise UserError(f"{what} did not answer 200 at {url} within {timeout:.0f} s "
                    "(deploy.ready_timeout_s); traffic stays on the version serving now")
