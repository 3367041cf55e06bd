"""The alert rules (docker/prometheus/alerts.yml) with Prometheus' own tools: `promtool check
rules`, and `promtool test rules` (tests/monitoring/alerts-test.yml) where every alert fires on
the traffic it is about and stays quiet on healthy traffic; Alertmanager's config with `amtool`;
and the Prometheus config that loads the rules and routes them to Alertmanager."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

RULES = REPO_ROOT / "docker" / "prometheus" / "alerts.yml"
RULE_TESTS = Path(__file__).with_name("alerts-test.yml")
ALERTMANAGER = REPO_ROOT / "docker" / "alertmanager" / "alertmanager.yml"
PROMETHEUS = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
EXPECTED = {"CatsdogsHighErrorRatio", "CatsdogsHighLatencyP99", "CatsdogsNoTraffic",
            "CatsdogsConfidenceMedianDrop", "CatsdogsOutOfDistributionRatio",
            "CatsdogsLiveAccuracyLow",
            "CatsdogsDataDrift", "CatsdogsLabelsNeeded", "CatsdogsDriftCheckStale"}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: `make system-deps` (scripts/ensure-system-deps.sh) "
                    "installs Debian's prometheus, prometheus-alertmanager packages")
    return found


def _alerts() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"]}


def test_rules_are_valid() -> None:
    result = subprocess.run([_tool("promtool"), "check", "rules", str(RULES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _alerts() == EXPECTED


def test_every_rule_fires_and_stays_quiet_in_promtool_unit_tests() -> None:
    result = subprocess.run([_tool("promtool"), "test", "rules", str(RULE_TESTS)],
                            capture_output=True, text=True, timeout=120, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired, quiet = set(), set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == EXPECTED, f"rules never shown firing: {EXPECTED - fired}"
    assert quiet == EXPECTED, f"rules never shown quiet: {EXPECTED - quiet}"


def test_alertmanager_config_is_valid() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool (Debian prometheus-alertmanager) not installed")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_loads_the_rules_and_sends_alerts_to_alertmanager() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True   # keeps job="catsdogs_monitor"
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["pushgateway:9091"]
    result = subprocess.run([_tool("promtool"), "check", "config", "--syntax-only",
                             str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
