"""The drift alert's whole path with the real programs (Debian's prometheus,
prometheus-alertmanager, prometheus-pushgateway on loopback): `catsdogs monitor`'s gauges pushed
to the Pushgateway, scraped by Prometheus with the project's prometheus.yml and alerts.yml (only
the addresses and intervals changed for loopback), `CatsdogsDataDrift` fires and Alertmanager
(with the project's alertmanager.yml) lists it."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from catsdogs.monitoring.drift import SIGNALS, DriftResult, Signal
from catsdogs.stages import monitor
from tests.monitoring.logs import pushgateway
from tests.monitoring.test_alerts import ALERTMANAGER, PROMETHEUS, RULES
from tests.servers import free_port, start_process, stop_process, wait_http

pytestmark = pytest.mark.services


def _binary(*names: str) -> str:
    for name in names:
        if shutil.which(name):
            return str(shutil.which(name))
    pytest.fail(f"{names[0]} not found: `make system-deps` installs Debian's packages")


def _json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _drift(detected: bool) -> DriftResult:
    signals = [Signal(name, "test", 0.9 if detected else 0.5, 0.75, detected and i < 2)
               for i, name in enumerate(SIGNALS)]
    return DriftResult(signals, 0.25 if detected else 0.0, detected, 80, 200)


def test_pushed_drift_fires_in_alertmanager(tmp_path: Path, monkeypatch) -> None:
    am_port, prom_port = free_port(), free_port()
    am_url, prom_url = f"http://127.0.0.1:{am_port}", f"http://127.0.0.1:{prom_port}"
    alertmanager = start_process(
        [_binary("prometheus-alertmanager", "alertmanager"), f"--config.file={ALERTMANAGER}",
         f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
         "--cluster.listen-address="], tmp_path / "alertmanager.log")
    prometheus = None
    try:
        wait_http(f"{am_url}/-/healthy", 60, alertmanager, tmp_path / "alertmanager.log")
        with pushgateway(tmp_path) as gateway:
            config = yaml.safe_load(PROMETHEUS.read_text())
            config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
            config["rule_files"] = [str(RULES)]
            config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
                f"127.0.0.1:{am_port}"]
            jobs = {job["job_name"]: job for job in config["scrape_configs"]}
            jobs["pushgateway"]["static_configs"][0]["targets"] = [gateway.split("//")[1]]
            config["scrape_configs"] = [jobs["pushgateway"]]
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            prometheus = start_process(
                [_binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prometheus.log")
            wait_http(f"{prom_url}/-/ready", 60, prometheus, tmp_path / "prometheus.log")
            rules = _json(f"{prom_url}/api/v1/rules")["data"]["groups"]  # type: ignore[index]
            assert {r["name"] for g in rules for r in g["rules"]} >= {"CatsdogsDataDrift"}

            monkeypatch.setenv(monitor.PUSHGATEWAY_ENV, gateway)
            assert monitor.push_metrics(_drift(False), "CatsDogsCNN", "3")
            time.sleep(5)
            assert not [a for a in _json(f"{am_url}/api/v2/alerts")  # type: ignore[union-attr]
                        if a["labels"]["alertname"] == "CatsdogsDataDrift"]

            assert monitor.push_metrics(_drift(True), "CatsDogsCNN", "3")
            deadline, fired = time.monotonic() + 60, []
            while not fired and time.monotonic() < deadline:
                fired = [a for a in _json(f"{am_url}/api/v2/alerts")  # type: ignore[union-attr]
                         if a["labels"]["alertname"] == "CatsdogsDataDrift"]
                time.sleep(1)
            assert fired, (tmp_path / "prometheus.log").read_text()[-2000:]
            labels = fired[0]["labels"]
            assert labels["model_name"] == "CatsDogsCNN" and labels["model_version"] == "3"
            assert labels["severity"] == "warning"
            assert "CatsDogsCNN v3" in fired[0]["annotations"]["summary"]
    finally:
        if prometheus is not None:
            stop_process(prometheus)
        stop_process(alertmanager)
