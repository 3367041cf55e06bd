"""Draining a serving pod before it is stopped: the Helm chart's preStop hook
(`python -m catsdogs.deployment.drain`, docs/kubernetes.md "Draining on shutdown").

`bentoml serve` stops its API process and its model process together on SIGTERM, so a request
still in flight then (decoded, waiting for the model) is answered 503 `model_unavailable`
(tests/serving/test_drain.py shows it). The hook therefore makes sure nothing is in flight before
Kubernetes sends SIGTERM:

1. create the service's drain file (`CATSDOGS_DRAIN_FILE`): its /readyz answers 503 from then on,
   every endpoint keeps answering;
2. wait `--probe-seconds` (the readiness probe's period x failures): every prober of /readyz has
   seen it fail and the pod's removal from the Service's endpoints has reached kube-proxy and the
   Ingress controllers, so no new request arrives;
3. wait until the service has no request in progress (`bentoml_service_request_in_progress` on
   its own /metrics, the probes and /metrics excluded), polling every `--poll-seconds`, at most
   `--longest-request-seconds`.

It always exits 0: a hook that fails only delays SIGTERM, and Kubernetes kills the container at
the end of its grace period whatever the hook does.
"""

from __future__ import annotations

import argparse
import logging
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from catsdogs.settings import ServingSettings, SettingsError, load

log = logging.getLogger(__name__)

IN_PROGRESS = "bentoml_service_request_in_progress"
NOT_REQUESTS = frozenset({"/metrics", "/readyz", "/livez", "/healthz"})


def requests_in_progress(metrics_text: str) -> int:
    """Requests the service is handling, from its Prometheus text (probes and /metrics, such as
    the scrape reading it, left out)."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == IN_PROGRESS and sample.labels.get("endpoint") not in NOT_REQUESTS:
                total += sample.value
    return round(total)


def _scrape(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return response.read().decode()


def drain(drain_file: Path | None, metrics_url: str, probe_s: float, longest_s: float,
          poll_s: float = 0.5, scrape: Callable[[str], str] = _scrape,
          sleep: Callable[[float], None] = time.sleep) -> dict[str, float | int | str]:
    """Steps 1-3 of the module docstring; what happened: `waited_s` for requests in flight after
    the probe wait, `left` requests still in flight when it gave up (0: none), `outcome`
    (`idle`, `timeout`, or `no_metrics` when /metrics did not answer)."""
    if drain_file is not None:
        drain_file.parent.mkdir(parents=True, exist_ok=True)
        drain_file.touch()
        log.info("draining: %s created, /readyz answers 503", drain_file)
    else:
        log.warning("draining: CATSDOGS_DRAIN_FILE is not set, /readyz keeps answering ready")
    sleep(probe_s)
    started = time.monotonic()
    left = 0
    while True:
        try:
            left = requests_in_progress(scrape(metrics_url))
        except OSError as exc:
            log.warning("draining: %s did not answer (%s); not waiting for requests", metrics_url,
                        exc)
            return {"waited_s": round(time.monotonic() - started, 1), "left": -1,
                    "outcome": "no_metrics"}
        waited = time.monotonic() - started
        if left == 0 or waited >= longest_s:
            outcome = "idle" if left == 0 else "timeout"
            log.info("draining: %s after %.1f s (%d requests in flight)", outcome, waited, left)
            return {"waited_s": round(waited, 1), "left": left, "outcome": outcome}
        sleep(poll_s)


def arguments() -> argparse.ArgumentParser:
    """The hook's command line (the Helm chart's preStop command)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=3000, help="the service's port")
    parser.add_argument("--probe-seconds", type=float, required=True,
                        help="wait after creating the drain file (readiness period x failures)")
    parser.add_argument("--longest-request-seconds", type=float, required=True,
                        help="wait at most this long for requests in flight")
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        drain_file = load(ServingSettings).drain_file
    except SettingsError as exc:   # the service itself would not have started: nothing to drain
        log.error("draining: %s", exc)
        drain_file = None
    drain(drain_file, f"http://127.0.0.1:{args.port}/metrics", args.probe_seconds,
          args.longest_request_seconds, args.poll_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
