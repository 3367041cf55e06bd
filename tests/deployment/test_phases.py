"""The rollout's live-traffic phases (catsdogs.deployment.phases).

First the gates' arithmetic on figures given by hand (a histogram's p99, the verdicts). Then
one scenario for real: a real MLflow server, real `bentoml serve` slots behind a real HAProxy,
keep-alive clients sending varied photos the whole time:
- v1 deployed (nothing live: the plain switch and the labelled check);
- v2, the same network with its labels swapped, is stopped at the shadow phase on agreement:
  no client ever gets its answer, @champion goes back to v1 (`live traffic gate`), v2 is tagged
  rolled_back with the gate in its reason;
- v3, the same network on 512 px pictures (much slower), skips the shadow and is rolled back
  during the canary on p99: clients got some of its answers, none failed, v1 serves again;
- v4, the same network as v1, passes shadow, canary and watch: 0 failed requests, v4 serves.
The phases run with short windows (`--set`-style overrides), as CI allows."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from catsdogs.config import DeployParams, load_params
from catsdogs.deployment import phases
from catsdogs.deployment.phases import FAILED, NO_TRAFFIC, PASSED, Counts, PhaseReport, judge
from catsdogs.deployment.rollout import deploy_champion
from catsdogs.deployment.targets.local import LocalTarget
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.registry.history import champion_history
from catsdogs.registry.names import BY_LIVE_GATE, DEPLOY_STATUS_TAG, ROLLED_BACK
from tests.deployment.load import Load
from tests.deployment.test_local_rollout import MODEL, REPO_ROOT, register, target  # noqa: F401

METRICS = """\
# TYPE bentoml_service_request_total counter
bentoml_service_request_total{endpoint="/predict",http_response_code="200",service_name="s"} 90
bentoml_service_request_total{endpoint="/predict",http_response_code="500",service_name="s"} 10
bentoml_service_request_total{endpoint="/readyz",http_response_code="200",service_name="s"} 7
# TYPE bentoml_service_request_duration_seconds histogram
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",le="0.1",service_name="s"} 50
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",le="1.0",service_name="s"} 90
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",le="+Inf",service_name="s"} 90
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="500",le="0.1",service_name="s"} 10
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="500",le="1.0",service_name="s"} 10
bentoml_service_request_duration_seconds_bucket{endpoint="/predict",http_response_code="500",le="+Inf",service_name="s"} 10
bentoml_service_request_duration_seconds_count{endpoint="/predict",http_response_code="200",service_name="s"} 90
"""


def test_counts_read_predict_only_and_interpolate_p99() -> None:
    counts = Counts.parse(METRICS)
    assert (counts.requests, counts.errors) == (100, 10)
    assert counts.buckets == ((0.1, 60), (1.0, 100), (float("inf"), 100))
    # rank 99 of 100 lies in (0.1, 1.0]: 0.1 + 0.9 * (99 - 60) / 40
    assert counts.quantile(0.99) == pytest.approx(0.9775)
    assert counts.since(counts).quantile(0.99) is None and counts.since(Counts()).requests == 100


@pytest.mark.parametrize(("report", "decision", "gate"), [
    (PhaseReport("shadow", requests=50, compared=50, agreement=0.95, error_ratio=0.0,
                 p99_s=0.3, ood_ratio_gap=0.02), PASSED, None),
    (PhaseReport("shadow", requests=50, compared=50, agreement=0.4), FAILED, "agreement"),
    (PhaseReport("shadow", requests=50, compared=50, agreement=1.0, ood_ratio_gap=0.3),
     FAILED, "ood_ratio"),
    (PhaseReport("shadow", requests=50, compared=5, agreement=0.0), NO_TRAFFIC, None),
    (PhaseReport("canary", requests=30, error_ratio=0.1), FAILED, "error_ratio"),
    (PhaseReport("canary", requests=30, error_ratio=0.0, p99_s=2.5), FAILED, "p99"),
    (PhaseReport("watch", requests=30, confidence=0.6, champion_confidence=0.9), FAILED,
     "confidence"),
    (PhaseReport("watch", requests=30, confidence=0.85, champion_confidence=0.9), PASSED, None),
    (PhaseReport("canary", requests=3, error_ratio=1.0), NO_TRAFFIC, None),
])
def test_judge_names_the_failing_gate(report: PhaseReport, decision: str,
                                      gate: str | None) -> None:
    judge(report, DeployParams())   # params.yaml's defaults: min_requests 20, p99 2 s, ...
    assert (report.decision, report.gate) == (decision, gate), report
    assert (report.reason is None) == (gate is None)


class _Target:
    """A Phased stand-in: its /metrics grows by `per_poll` answered /predict requests (`slow`:
    each in the 5 s bucket) every time it is read; every command recorded in `calls`."""

    def __init__(self, per_poll: int, slow: bool = False) -> None:
        self.per_poll, self.slow, self.served, self.calls = per_poll, slow, 0, []

    def staged_metrics(self) -> str:
        self.served += self.per_poll
        fast = 0 if self.slow else self.served
        return (f'bentoml_service_request_total{{endpoint="/predict",http_response_code="200"}} '
                f"{self.served}\n" + "".join(
                    f'bentoml_service_request_duration_seconds_bucket{{endpoint="/predict",'
                    f'le="{le}"}} {n}\n' for le, n in (("0.1", fast), ("5.0", self.served),
                                                        ("+Inf", self.served))))

    def mirror(self, on: bool) -> None:
        self.calls.append(("mirror", on))

    def shift(self, percent: int) -> None:
        self.calls.append(("shift", percent))


def _log(rows: list[tuple[str, str, float, str]]) -> Any:
    """read_predictions' stand-in over (version, label, confidence, content_hash) rows."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["model_version", "label", "confidence", "content_hash"])
    frame["in_distribution"] = True

    def read(since: object = None, model_version: str | None = None) -> Any:
        return frame[frame["model_version"] == model_version]
    return read


def _gates(**changes: float) -> DeployParams:
    return DeployParams(**{"min_requests": 10, "shadow_requests": 30, "shadow_s": 60,
                           "canary_s": 0.01, "watch_s": 0.01, **changes})


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phases, "POLL_S", 0.0)
    monkeypatch.setattr(phases, "LOG_SETTLE_S", 0.0)


AGREE = [(v, "cat" if i % 2 else "dog", 0.9, f"h{i}") for v in ("1", "2") for i in range(40)]


@pytest.mark.usefixtures("quick")
def test_phases_run_in_order_and_the_shadow_ends_at_its_request_count() -> None:
    fake = _Target(per_poll=12)
    reports = phases.run(_gates(), fake, _log(AGREE), "2", "1")
    assert [r.phase for r in reports] == ["shadow", "canary", "watch"]
    assert fake.calls == [("mirror", True), ("mirror", False), ("shift", 10), ("shift", 100)]
    shadow = reports[0]
    assert (shadow.decision, shadow.agreement, shadow.compared) == (PASSED, 1.0, 40)
    assert shadow.requests >= 30 and shadow.p99_s is not None and shadow.p99_s <= 0.1
    assert "shadow:" in phases.summary_line(reports)


@pytest.mark.usefixtures("quick")
def test_a_failing_gate_stops_the_phases_naming_it() -> None:
    swapped = [(v, ("cat" if i % 2 else "dog") if v == "1" else ("dog" if i % 2 else "cat"),
                0.9, f"h{i}") for v in ("1", "2") for i in range(40)]
    fake = _Target(per_poll=12)
    with pytest.raises(phases.GateFailed) as failed:
        phases.run(_gates(), fake, _log(swapped), "2", "1")
    assert (failed.value.report.phase, failed.value.report.gate) == ("shadow", "agreement")
    assert fake.calls == [("mirror", True), ("mirror", False)], "traffic moved after a fail"
    assert "shadow gate 'agreement' failed" in str(failed.value)

    slow = _Target(per_poll=12, slow=True)
    with pytest.raises(phases.GateFailed) as failed:
        phases.run(_gates(shadow_s=0, canary_s=60), slow, _log(AGREE), "2", "1")
    assert (failed.value.report.phase, failed.value.report.gate) == ("canary", "p99")
    assert slow.calls == [("shift", 10)]


@pytest.mark.usefixtures("quick")
def test_without_traffic_the_phases_pass_on_to_the_post_deploy_check() -> None:
    started = time.monotonic()
    reports = phases.run(_gates(shadow_s=600, canary_s=600, watch_s=600, idle_s=0.05),
                         _Target(per_poll=0), _log([]), "2", "1")
    assert time.monotonic() - started < 60, "a quiet endpoint waited out the windows"
    assert [r.decision for r in reports] == [NO_TRAFFIC] * 3
    assert "the post-deploy check decided" in phases.summary_line(reports)


def _photos(sample_dir: Path) -> list[Path]:
    return [p for label in ("cat", "dog") for p in sorted((sample_dir / label).glob("*.jpg"))[-10:]]


PHASES = ["deploy.drain_s=1", "deploy.min_requests=10", "deploy.shadow_requests=30",
          "deploy.shadow_s=60", "deploy.canary_percent=30", "deploy.canary_s=15",
          "deploy.watch_s=8"]


def test_shadow_canary_watch_on_real_slots(
        target: tuple[LocalTarget, DataPaths], mlflow_server: str, sample_dir: Path,  # noqa: F811
        artifacts_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local, paths = target
    # no calibration photos: the imports measure no serving variants (minutes at 512 px on 2
    # busy cores) and every slot serves torch fp32, which is all these phases need
    (tmp_path / "no-photos").mkdir()
    monkeypatch.setenv("CATSDOGS_SAMPLE_DIR", str(tmp_path / "no-photos"))
    base = [f"mlflow.registered_model_name={MODEL}", "deploy.check_images=50", *PHASES]
    params = load_params(REPO_ROOT / "params.yaml", base)
    client = MlflowClient(mlflow_server)
    photos = _photos(sample_dir)
    v1 = register(mlflow_server, test_accuracy=0.0)
    first = deploy_champion(params, paths, local, client)
    assert first.details["phases"] == [] and local.serving() == v1, first.to_dict()
    figures: dict[str, object] = {}

    def refused(version: str, phase: str, gate: str, overrides: list[str]) -> Load:
        with Load(local.endpoint(), photos, keep_alive=True) as load, \
                pytest.raises(UserError) as failed:
            deploy_champion(load_params(REPO_ROOT / "params.yaml", [*base, *overrides]), paths,
                            local, client)
        message = str(failed.value)
        assert f"{phase} gate '{gate}' failed for {MODEL} v{version}" in message, message
        assert f"@champion is v{v1} again" in message, message
        assert load.failures == [], load.failures[:5]
        assert local.serving() == v1 and local.active()["version"] == v1
        assert client.get_model_version_by_alias(MODEL, "champion").version == v1
        tags = client.get_model_version(MODEL, version).tags
        assert tags[DEPLOY_STATUS_TAG] == ROLLED_BACK, tags
        assert f"{phase} gate '{gate}'" in tags["deploy.reason"], tags
        last = champion_history(client, MODEL)[-1]
        assert (last.from_version, last.to_version, last.by) == (version, v1, BY_LIVE_GATE)
        assert f"{phase} gate '{gate}'" in last.reason, last
        figures[f"v{version} ({phase} {gate})"] = {"requests": load.sent,
                                                    "failures": len(load.failures),
                                                    "versions": load.versions,
                                                    "error": message[-600:]}
        return load

    v2 = register(mlflow_server, test_accuracy=0.0, swapped=True)
    swapped = refused(v2, "shadow", "agreement", [])
    assert v2 not in swapped.versions, "a client got an answer from the shadow"

    v3 = register(mlflow_server, test_accuracy=0.0, image_size=512)
    slow = refused(v3, "canary", "p99", ["deploy.shadow_s=0", "deploy.max_p99_s=0.25",
                                         "deploy.canary_percent=50", "deploy.canary_s=90"])
    assert slow.versions[0] == v1 and slow.versions[-1] == v1, slow.versions

    v4 = register(mlflow_server, test_accuracy=0.0)
    started = time.monotonic()
    with Load(local.endpoint(), photos, keep_alive=True) as load:
        done = deploy_champion(params, paths, local, client)
    seconds = time.monotonic() - started
    assert load.failures == [], load.failures[:5]
    assert done.details["deployed"] is True and local.serving() == v4, done.to_dict()
    assert load.versions[0] == v1 and load.versions[-1] == v4, load.versions
    phases = {p["phase"]: p for p in done.details["phases"]}
    assert list(phases) == ["shadow", "canary", "watch"], phases
    assert all(p["decision"] == PASSED for p in phases.values()), phases
    assert phases["shadow"]["agreement"] >= 0.9 and phases["shadow"]["compared"] >= 10
    assert "shadow:" in done.message and "watch:" in done.message, done.message
    figures[f"v{v4} (passed)"] = {"requests": load.sent, "failures": len(load.failures),
                                  "versions": load.versions, "seconds": round(seconds, 1),
                                  "phases": done.details["phases"]}
    (artifacts_dir / "local-phases.json").write_text(json.dumps(figures, indent=2))


def test_a_stalled_scrape_is_retried_on_a_new_connection() -> None:
    """A real listening socket whose first connection is accepted and never answered (what a
    busy host did to one /metrics request while the slot kept answering others): the scrape
    tries again on a new connection and gets the body; a server that never answers is a
    UserError naming the tries."""
    import socket
    import threading

    from catsdogs.deployment.release import scrape

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[socket.socket] = []

    def serve() -> None:
        for number in range(3):
            connection, _ = server.accept()
            if number == 0:
                held.append(connection)   # stalled: read nothing, answer nothing
                continue
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n"
                               b"\r\nmetrics 1")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert scrape(f"http://127.0.0.1:{port}/metrics", "the test's", timeout=1.0) == "metrics 1"
    silent = socket.create_server(("127.0.0.1", 0))
    with pytest.raises(UserError, match="did not answer 2 tries of 1 s"):
        scrape(f"http://127.0.0.1:{silent.getsockname()[1]}/metrics", "the test's",
               attempts=2, timeout=1.0)
    for connection in held:
        connection.close()
    server.close()
    silent.close()
