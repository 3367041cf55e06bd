"""Shadow, canary, watch: a new version judged on live traffic before and after it takes it all.

    staged   the new version started beside the live one and ready (/readyz), no traffic
    shadow   a copy of each live POST /predict* goes to it, its answers thrown away, until
             deploy.shadow_requests copies or deploy.shadow_s seconds;
             gates: agreement with the champion, error ratio, p99, out-of-distribution ratio gap
    canary   deploy.canary_percent % of live requests answered by it (HAProxy server weights
             through the runtime API, the switch's own mechanism) for deploy.canary_s;
             gates: error ratio, p99, median confidence against the champion's
    watch    all traffic to it (the switch); the old version stays up, idle, for deploy.watch_s
             under the canary's gates; only then is it drained and stopped

A failing gate raises `GateFailed` (a UserError naming the phase and the gate); the rollout
(catsdogs.deployment.rollout) then sends traffic back to the old version, which never stopped,
stops the new one and moves @champion back. A phase that saw fewer than deploy.min_requests
requests (shadow: compared requests) cannot judge: its decision is `no_traffic`, and with no
traffic at all the labelled post-deploy check decides alone. A phase that has had no request at
all after deploy.idle_s ends then (a quiet demo does not wait out every window). A phase with 0
seconds is skipped.

Why the shadow gets its copy from HAProxy's Lua (`mirror.lua`, loaded by the local target and the
compose proxy alike): HAProxy is already the one hop every request takes in both targets, and
Debian's haproxy 2.6 is built with Lua 5.3. The request path only appends the buffered body to a
bounded queue (64 copies; more, or a body not whole in the 64 KiB buffer, are dropped), and two
background tasks send the copies (`core.tcp`) and throw the answers away, so a client's
latency never waits on the shadow and a shadow answer has no way back to a client
(tests/deployment/test_mirror.py measures both). The shadow is named by the deploy through the
runtime API (`set map <mirror.map> shadow host:port`, `off` to stop), never by a caller. nginx's
`mirror` would need nginx back in front (and holds the client's request until the mirror
subrequest finishes); mirroring from the champion service would put the copy on the serving
process's own event loop and need a second HTTP client there.

Where each figure comes from (the cheapest exact source):
- requests, error ratio (5xx), p99: the new slot's own /metrics (BentoML's
  `bentoml_service_request_total` and `..._duration_seconds` histogram of `/predict`), the
  difference between the phase's start and now. The slot is the new version alone, so no label
  join is needed; p99 is interpolated in the histogram's bucket like PromQL's histogram_quantile.
- agreement and the out-of-distribution gap: the prediction log, the shadow's rows joined with the
  champion's by `content_hash` (the same picture, whatever its file) in the shadow window. Exact,
  and nothing new on the request path: both versions already log every answer.
- confidence: the prediction log's median `confidence` of each version in the window (the
  champion's from the phases before when it gets no traffic any more).
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from prometheus_client.parser import text_string_to_metric_families

from catsdogs.config import DeployParams
from catsdogs.errors import UserError

log = logging.getLogger(__name__)

ENDPOINT = "/predict"
REQUESTS = "bentoml_service_request_total"
DURATION_BUCKET = "bentoml_service_request_duration_seconds_bucket"
POLL_S = 2.0          # how often a phase reads its figures
LOG_SETTLE_S = 3.0    # the service writes its log rows every 2 s (prediction_log_flush_s)
PASSED, FAILED, NO_TRAFFIC = "passed", "failed", "no_traffic"


@runtime_checkable
class Phased(Protocol):
    """A target that can run a new version beside the live one and share traffic between them
    (the local and compose targets)."""

    def stage(self, release: Any) -> dict[str, Any]:
        """Start `release` beside the live version and wait for its /readyz; no traffic moves.
        Its facts (slot or colour, ready_s, ...). UserError when it never becomes ready (what it
        started is stopped)."""

    def staged_metrics(self) -> str:
        """The staged version's own /metrics (Prometheus text)."""

    def mirror(self, on: bool) -> None:
        """Start (or stop) copying live /predict requests to the staged version."""

    def shift(self, percent: int) -> None:
        """`percent` of live requests to the staged version (100: all of them, the switch)."""

    def finish(self) -> dict[str, Any]:
        """The staged version is the live one: drain and stop the old one. Its facts."""

    def abandon(self) -> None:
        """Traffic back to the old version, the staged one stopped and forgotten. Never raises."""


@dataclass(frozen=True)
class Counts:
    """Cumulative `/predict` figures of one slot's /metrics: requests, 5xx answers, and the
    latency histogram as sorted (upper bound in s, cumulative count) pairs."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()

    @classmethod
    def parse(cls, metrics_text: str) -> Counts:
        requests = errors = 0.0
        buckets: dict[float, float] = {}
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                if sample.labels.get("endpoint") != ENDPOINT:
                    continue
                if sample.name == REQUESTS:
                    requests += sample.value
                    if sample.labels.get("http_response_code", "").startswith("5"):
                        errors += sample.value
                elif sample.name == DURATION_BUCKET:
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
        return cls(requests, errors, tuple(sorted(buckets.items())))

    def since(self, start: Counts) -> Counts:
        """The figures between `start` and this snapshot."""
        before = dict(start.buckets)
        return Counts(self.requests - start.requests, self.errors - start.errors,
                      tuple((b, n - before.get(b, 0.0)) for b, n in self.buckets))

    def quantile(self, q: float) -> float | None:
        """The q-quantile latency (s), interpolated linearly inside its bucket as PromQL's
        histogram_quantile does (the highest finite bound when it falls in +Inf); None without
        observations."""
        total = self.buckets[-1][1] if self.buckets else 0.0
        if total <= 0:
            return None
        rank, lower, below = q * total, 0.0, 0.0
        for bound, count in self.buckets:
            if count >= rank:
                if bound == float("inf"):
                    return lower
                inside = count - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, count
        return lower


@dataclass
class PhaseReport:
    """One phase's figures and verdict, as `deploy --json` prints them (`phases`). `requests`:
    answered by the new version in the phase; `compared`: shadow answers joined with the
    champion's by content hash; ratios in [0, 1], `p99_s` in seconds, confidences medians."""

    phase: str
    requests: int = 0
    compared: int = 0
    agreement: float | None = None
    error_ratio: float | None = None
    p99_s: float | None = None
    ood_ratio_gap: float | None = None
    confidence: float | None = None
    champion_confidence: float | None = None
    decision: str = NO_TRAFFIC
    gate: str | None = None
    reason: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        """One line for the summary and logs."""
        figures = [f"{self.requests} requests"]
        if self.agreement is not None:
            figures.append(f"agreement {self.agreement:.3f} on {self.compared}")
        if self.error_ratio is not None:
            figures.append(f"error ratio {self.error_ratio:.3f}")
        if self.p99_s is not None:
            figures.append(f"p99 {self.p99_s:.3f} s")
        if self.confidence is not None:
            figures.append(f"median confidence {self.confidence:.3f}")
        return f"{self.phase}: {', '.join(figures)}, {self.decision} ({self.seconds:.0f} s)"


class GateFailed(UserError):
    """A phase's gate failed: `report` is the failing phase, `reports` every phase run so far."""

    def __init__(self, report: PhaseReport, reports: list[PhaseReport]) -> None:
        super().__init__(f"{report.phase} gate '{report.gate}' failed: {report.reason}")
        self.report, self.reports = report, reports


@dataclass
class LogWindow:
    """The prediction log rows of the new and the old version since `since` (`read` is
    `catsdogs.monitoring.prediction_log.read_predictions` bound to the log's URL)."""

    read: Callable[..., Any]
    new: str
    old: str
    since: dt.datetime
    champion_confidences: list[float] = field(default_factory=list)

    def rows(self, version: str) -> Any:
        frame = self.read(since=self.since, model_version=version)
        return frame[["label", "confidence", "in_distribution", "content_hash"]]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _shadow_figures(report: PhaseReport, window: LogWindow) -> None:
    """Agreement and OOD gap of the shadow's answers joined with the champion's by content
    hash (the last answer per picture of each)."""
    new = window.rows(window.new).drop_duplicates("content_hash", keep="last")
    old = window.rows(window.old).drop_duplicates("content_hash", keep="last")
    joined = new.merge(old, on="content_hash", suffixes=("_new", "_old"))
    report.compared = len(joined)
    if report.compared:
        report.agreement = float((joined["label_new"] == joined["label_old"]).mean())
        scored = joined.dropna(subset=["in_distribution_new", "in_distribution_old"])
        if len(scored):
            report.ood_ratio_gap = float(
                (~scored["in_distribution_new"].astype(bool)).mean()
                - (~scored["in_distribution_old"].astype(bool)).mean())
    # every poll re-reads the whole window: the latest read replaces the earlier ones
    window.champion_confidences[:] = old["confidence"].dropna().tolist()
    report.champion_confidence = _median(window.champion_confidences)


def _live_figures(report: PhaseReport, window: LogWindow) -> None:
    """Median confidence of the new version's logged answers, and the champion's (in this
    window, else from the phases before)."""
    report.confidence = _median(window.rows(window.new)["confidence"].dropna().tolist())
    old = window.rows(window.old)["confidence"].dropna().tolist()
    report.champion_confidence = _median(old or window.champion_confidences)


def judge(report: PhaseReport, gates: DeployParams) -> None:
    """Set `decision` (and `gate`, `reason` when one fails) from the report's figures."""
    enough = report.compared if report.phase == "shadow" else report.requests
    failed: tuple[str, str] | None = None
    if report.requests >= gates.min_requests:
        if report.error_ratio is not None and report.error_ratio > gates.max_error_ratio:
            failed = ("error_ratio", f"{report.error_ratio:.3f} of {report.requests} requests "
                                     f"answered 5xx (max {gates.max_error_ratio})")
        elif report.p99_s is not None and report.p99_s > gates.max_p99_s:
            failed = ("p99", f"p99 latency {report.p99_s:.3f} s over {report.requests} "
                             f"requests (max {gates.max_p99_s} s)")
    if failed is None and enough >= gates.min_requests:
        if report.agreement is not None and report.agreement < gates.min_agreement:
            failed = ("agreement", f"same label as the champion on {report.agreement:.3f} of "
                                   f"{report.compared} pictures (min {gates.min_agreement})")
        elif report.ood_ratio_gap is not None and report.ood_ratio_gap > gates.max_ood_ratio_gap:
            failed = ("ood_ratio", f"out-of-distribution ratio {report.ood_ratio_gap:+.3f} above "
                                   f"the champion's (max {gates.max_ood_ratio_gap})")
        elif (report.confidence is not None and report.champion_confidence is not None
              and report.confidence < report.champion_confidence - gates.max_confidence_drop):
            failed = ("confidence", f"median confidence {report.confidence:.3f} against the "
                                    f"champion's {report.champion_confidence:.3f} (max drop "
                                    f"{gates.max_confidence_drop})")
    if failed is not None:
        report.decision, (report.gate, report.reason) = FAILED, failed
    else:
        report.decision = PASSED if enough >= gates.min_requests else NO_TRAFFIC


def observe(phase: str, target: Phased, window: LogWindow, gates: DeployParams, seconds: float,
            until_requests: int | None = None, clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> PhaseReport:
    """Watch the staged version for `seconds` (shadow: or until `until_requests` copies were
    answered), judging every POLL_S: a failing gate ends the phase at once. The final verdict
    waits LOG_SETTLE_S for the last log rows."""
    started = clock()
    start = Counts.parse(target.staged_metrics())
    window.since = dt.datetime.now(dt.UTC)
    figures = _shadow_figures if phase == "shadow" else _live_figures

    def measure() -> PhaseReport:
        counts = Counts.parse(target.staged_metrics()).since(start)
        report = PhaseReport(phase, requests=round(counts.requests),
                             seconds=clock() - started)
        if counts.requests:
            report.error_ratio = counts.errors / counts.requests
            report.p99_s = counts.quantile(0.99)
        figures(report, window)
        judge(report, gates)
        return report

    while True:
        sleep(POLL_S)
        report = measure()
        elapsed = clock() - started
        done = elapsed >= seconds or (
            until_requests is not None and report.requests >= until_requests) or (
            report.requests == 0 and elapsed >= gates.idle_s)   # nobody is calling
        if report.decision == FAILED or done:
            break
    if report.decision != FAILED:
        sleep(LOG_SETTLE_S)
        report = measure()
    log.info("deploy phase %s", report.line())
    return report


def run(gates: DeployParams, target: Phased, read_log: Callable[..., Any], new: str,
        old: str) -> list[PhaseReport]:
    """Shadow, canary, then the switch and the watch (see the module docstring); every phase's
    report. Raises GateFailed at the first failing gate, with traffic where it was then (the
    caller sends it back). Leaves all traffic on the new version."""
    window = LogWindow(read_log, new, old, dt.datetime.now(dt.UTC))
    reports: list[PhaseReport] = []

    def phase(name: str, seconds: float, until: int | None = None) -> None:
        report = observe(name, target, window, gates, seconds, until)
        reports.append(report)
        if report.decision == FAILED:
            raise GateFailed(report, reports)

    if gates.shadow_s > 0:
        target.mirror(True)
        try:
            phase("shadow", gates.shadow_s, gates.shadow_requests)
        finally:
            target.mirror(False)
    if gates.canary_s > 0 and gates.canary_percent > 0:
        target.shift(gates.canary_percent)
        phase("canary", gates.canary_s)
    target.shift(100)
    if gates.watch_s > 0:
        phase("watch", gates.watch_s)
    return reports


def summary_line(reports: list[PhaseReport]) -> str:
    """The phases in one line; says when no phase had traffic enough to judge."""
    if not reports:
        return ""
    if all(r.decision == NO_TRAFFIC for r in reports):
        return (f"; no live traffic to judge in {'/'.join(r.phase for r in reports)}: the "
                "post-deploy check decided")
    return "; " + "; ".join(r.line() for r in reports)
