"""The Argo Rollouts example (docs/examples/argo-rollouts/, docs/kubernetes.md "Progressive
delivery with Argo Rollouts"), offline: the manifests parse and have the shape of the Argo
Rollouts and Istio fields they use, they fit the chart rendered with the example's values (the
Deployment the Rollout takes its pods from, the selectors, the slot label), the phases come in
order (shadow with no caller answered by the new version, then canary, then full), every analysis
argument is declared and passed, and every PromQL query is valid (`promtool check rules`) and
computes what its gate means on a stable and a new version's series (`promtool test rules`): a
healthy new version passes every gate, one with swapped labels, errors and slow answers fails
them."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helm.conftest import CHART_DIR, REPO_ROOT, run_helm

EXAMPLE = REPO_ROOT / "docs" / "examples" / "argo-rollouts"
RELEASE = NAMESPACE = "catsdogs"     # what docs/kubernetes.md installs
ARG = re.compile(r"\{\{\s*args\.([a-z0-9-]+)\s*\}\}")

STRING_MATCH = {"type": "object", "additionalProperties": False, "minProperties": 1,
                "maxProperties": 1, "properties": {k: {"type": "string"}
                                                   for k in ("exact", "prefix", "regex")}}
ANALYSIS_STEP = {
    "type": "object", "additionalProperties": False, "required": ["templates"],
    "properties": {
        "templates": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["templateName"],
            "properties": {"templateName": {"type": "string"}}}},
        "args": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {
                "name": {"type": "string"}, "value": {"type": "string"},
                "valueFrom": {"type": "object", "additionalProperties": False, "properties": {
                    "podTemplateHashValue": {"enum": ["Stable", "Latest"]}}}}}},
    },
}
# The fields of argoproj.io/v1alpha1 Rollout (Argo Rollouts 1.7/1.8 CRD) the example uses, with
# their types; anything else is refused here (the API server would prune an unknown field).
ROLLOUT_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "argoproj.io/v1alpha1"}, "kind": {"const": "Rollout"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["replicas", "selector", "workloadRef", "strategy"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 1},
                "revisionHistoryLimit": {"type": "integer", "minimum": 0},
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}},
                "workloadRef": {
                    "type": "object", "additionalProperties": False,
                    "required": ["apiVersion", "kind", "name"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"},
                                   "scaleDown": {"enum": ["never", "onsuccess", "progressively"]}}},
                "strategy": {"type": "object", "additionalProperties": False, "required": ["canary"],
                             "properties": {"canary": {
                    "type": "object", "additionalProperties": False,
                    "required": ["stableService", "canaryService", "trafficRouting", "steps"],
                    "properties": {
                        "stableService": {"type": "string"}, "canaryService": {"type": "string"},
                        "trafficRouting": {
                            "type": "object", "additionalProperties": False, "properties": {
                                "managedRoutes": {"type": "array", "items": {
                                    "type": "object", "additionalProperties": False,
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string"}}}},
                                "istio": {"type": "object", "additionalProperties": False,
                                          "properties": {"virtualService": {
                                              "type": "object", "additionalProperties": False,
                                              "required": ["name"], "properties": {
                                                  "name": {"type": "string"},
                                                  "routes": {"type": "array",
                                                             "items": {"type": "string"}}}}}}}},
                        "steps": {"type": "array", "minItems": 1, "items": {
                            "type": "object", "minProperties": 1, "maxProperties": 1,
                            "additionalProperties": False, "properties": {
                                "setWeight": {"type": "integer", "minimum": 0, "maximum": 100},
                                "pause": {"type": "object"},
                                "analysis": ANALYSIS_STEP,
                                "setCanaryScale": {
                                    "type": "object", "additionalProperties": False,
                                    "minProperties": 1, "properties": {
                                        "replicas": {"type": "integer", "minimum": 0},
                                        "weight": {"type": "integer"},
                                        "matchTrafficWeight": {"type": "boolean"}}},
                                "setMirrorRoute": {
                                    "type": "object", "additionalProperties": False,
                                    "required": ["name"], "properties": {
                                        "name": {"type": "string"},
                                        "percentage": {"type": "integer", "minimum": 0,
                                                       "maximum": 100},
                                        "match": {"type": "array", "items": {
                                            "type": "object", "additionalProperties": False,
                                            "properties": {"method": STRING_MATCH,
                                                           "path": STRING_MATCH,
                                                           "headers": {"type": "object"}}}}}},
                            }}},
                    }}}},
            },
        },
    },
}
DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
ANALYSIS_TEMPLATE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "argoproj.io/v1alpha1"}, "kind": {"const": "AnalysisTemplate"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "additionalProperties": False, "required": ["metrics"],
                 "properties": {
            "args": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name"],
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}},
            "metrics": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "provider", "successCondition", "count"],
                "properties": {
                    "name": {"type": "string"}, "interval": DURATION,
                    "initialDelay": DURATION, "count": {"type": "integer", "minimum": 1},
                    "failureLimit": {"type": "integer", "minimum": 0},
                    "successCondition": {"type": "string"},
                    "failureCondition": {"type": "string"},
                    "provider": {"type": "object", "additionalProperties": False,
                                 "required": ["prometheus"], "properties": {"prometheus": {
                        "type": "object", "additionalProperties": False,
                        "required": ["address", "query"],
                        "properties": {"address": {"type": "string"},
                                       "query": {"type": "string"}}}}},
                }}},
        }},
    },
}
VIRTUAL_SERVICE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"enum": ["networking.istio.io/v1beta1", "networking.istio.io/v1"]},
        "kind": {"const": "VirtualService"},
        "spec": {"type": "object", "additionalProperties": False, "required": ["hosts", "http"],
                 "properties": {
            "hosts": {"type": "array", "items": {"type": "string"}},
            "http": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "route"],
                "properties": {"name": {"type": "string"}, "route": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["destination", "weight"],
                    "properties": {"weight": {"type": "integer"}, "destination": {
                        "type": "object", "additionalProperties": False, "required": ["host"],
                        "properties": {"host": {"type": "string"}}}}}}}}},
        }},
    },
}


def _objects() -> list[dict]:
    return [doc for path in sorted(EXAMPLE.glob("*.yaml")) if path.name != "values.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(kind: str) -> list[dict]:
    return [obj for obj in _objects() if obj["kind"] == kind]


def _rollout() -> dict:
    (rollout,) = _kind("Rollout")
    return rollout


def _templates() -> dict[str, dict]:
    return {t["metadata"]["name"]: t for t in _kind("AnalysisTemplate")}


@pytest.fixture(scope="module")
def chart(helm: Path) -> list[dict]:
    """The chart rendered as docs/kubernetes.md installs it, with the example's values."""
    result = run_helm(helm, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE,
                      "--values", str(EXAMPLE / "values.yaml"))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_manifests_have_the_shape_of_the_fields_they_use() -> None:
    kinds = sorted(obj["kind"] for obj in _objects())
    assert kinds == ["AnalysisTemplate", "AnalysisTemplate", "Rollout", "Service", "Service",
                     "VirtualService"]
    jsonschema.validate(_rollout(), ROLLOUT_SCHEMA)
    for template in _templates().values():
        jsonschema.validate(template, ANALYSIS_TEMPLATE_SCHEMA)
    (virtual_service,) = _kind("VirtualService")
    jsonschema.validate(virtual_service, VIRTUAL_SERVICE_SCHEMA)
    assert {obj["metadata"]["namespace"] for obj in _objects()} == {NAMESPACE}


def test_the_schemas_refuse_a_misspelt_field() -> None:
    """Control: the schemas above are strict (a typo in a step or a metric fails them)."""
    rollout = _rollout()
    rollout["spec"]["strategy"]["canary"]["steps"].append({"setWieght": 10})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rollout, ROLLOUT_SCHEMA)
    template = next(iter(_templates().values()))
    template["spec"]["metrics"][0]["sucessCondition"] = "true"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(template, ANALYSIS_TEMPLATE_SCHEMA)


def test_services_validate_against_kubernetes(tmp_path: Path) -> None:
    manifest = tmp_path / "services.yaml"
    manifest.write_text(yaml.safe_dump_all(_kind("Service")))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(cli), "--strict", "-k", "1.33.0", str(manifest)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("passed for resource") == 2, output


def test_the_rollout_fits_the_chart(chart: list[dict]) -> None:
    (deployment,) = [o for o in chart if o["kind"] == "Deployment"]
    (service,) = [o for o in chart if o["kind"] == "Service"]
    (monitor,) = [o for o in chart if o["kind"] == "ServiceMonitor"]
    rollout = _rollout()
    spec = rollout["spec"]
    ref = spec["workloadRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1", "Deployment", deployment["metadata"]["name"])
    assert deployment["spec"]["replicas"] == 0 and ref["scaleDown"] == "never"
    assert spec["selector"] == deployment["spec"]["selector"]
    pod = deployment["spec"]["template"]
    (bento,) = pod["spec"]["containers"]
    (slot,) = [item for item in bento["env"] if item["name"] == "CATSDOGS_SLOT"]
    assert slot["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['rollouts-pod-template-hash']"
    assert "preStop" in bento["lifecycle"]    # the chart's drain holds under the Rollout too
    canary = spec["strategy"]["canary"]
    services = {s["metadata"]["name"]: s for s in _kind("Service")}
    assert set(services) == {canary["stableService"], canary["canaryService"]}
    ports = {p["name"] for p in bento["ports"]}
    for name, own in services.items():
        assert own["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), name
        assert {p["targetPort"] for p in own["spec"]["ports"]} <= ports
        # not selected by the chart's ServiceMonitor: every pod is scraped once, as `catsdogs`
        labels = own["metadata"].get("labels", {})
        assert not monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    (virtual_service,) = _kind("VirtualService")
    routing = canary["trafficRouting"]
    assert routing["istio"]["virtualService"]["name"] == virtual_service["metadata"]["name"]
    routes = {r["name"]: r for r in virtual_service["spec"]["http"]}
    assert set(routing["istio"]["virtualService"]["routes"]) <= set(routes)
    for name in routing["istio"]["virtualService"]["routes"]:
        hosts = [d["destination"]["host"] for d in routes[name]["route"]]
        assert hosts == [canary["stableService"], canary["canaryService"]]
        assert [d["weight"] for d in routes[name]["route"]] == [100, 0]
    assert service["metadata"]["name"] in virtual_service["spec"]["hosts"]  # what callers use


def test_phases_shadow_then_canary_then_full() -> None:
    canary = _rollout()["spec"]["strategy"]["canary"]
    steps = [(next(iter(step)), next(iter(step.values()))) for step in canary["steps"]]
    managed = {r["name"] for r in canary["trafficRouting"]["managedRoutes"]}
    mirrors = [i for i, (kind, _) in enumerate(steps) if kind == "setMirrorRoute"]
    assert len(mirrors) == 2
    start, stop = mirrors
    assert steps[start][1]["name"] == steps[stop][1]["name"] and steps[start][1]["name"] in managed
    assert steps[start][1]["percentage"] == 100 and "percentage" not in steps[stop][1]
    assert steps[start][1]["match"] == [{"method": {"exact": "POST"},
                                         "path": {"prefix": "/predict"}}]
    # shadow: the new version has a pod but no caller's request until the mirror is removed
    assert steps[0] == ("setCanaryScale", {"replicas": 1})
    weights = [i for i, (kind, _) in enumerate(steps) if kind == "setWeight"]
    assert weights and min(weights) > stop
    assert [name for kind, body in steps[start:stop] if kind == "analysis"
            for name in (t["templateName"] for t in body["templates"])] == ["catsdogs-shadow"]
    # canary on a share, then full, each followed by an analysis before the next step
    assert [steps[i][1] for i in weights] == [10, 100]
    for i in weights:
        kind, body = steps[i + 1]
        assert kind == "analysis" and [t["templateName"] for t in body["templates"]] == [
            "catsdogs-canary"]
    assert steps[-1][0] == "analysis"   # the full phase is watched before it becomes stable


def test_analysis_arguments_are_declared_and_passed() -> None:
    templates = _templates()
    for kind, body in (next(iter(s.items())) for s in
                       _rollout()["spec"]["strategy"]["canary"]["steps"]):
        if kind != "analysis":
            continue
        passed = {a["name"]: a for a in body["args"]}
        assert passed["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
        assert passed["stable-hash"]["valueFrom"] == {"podTemplateHashValue": "Stable"}
        for ref in body["templates"]:
            declared = {a["name"]: a for a in templates[ref["templateName"]]["spec"]["args"]}
            assert set(passed) <= set(declared)
            assert {n for n, a in declared.items() if "value" not in a} <= set(passed)
    for name, template in templates.items():
        declared = {a["name"] for a in template["spec"]["args"]}
        used = set(ARG.findall(yaml.safe_dump(template["spec"]["metrics"])))
        assert used == declared, (name, used ^ declared)
        for metric in template["spec"]["metrics"]:
            assert metric["provider"]["prometheus"]["address"] == "{{args.prometheus}}"
            if metric["name"] != "requests":     # the gates watch 10 minutes, once a minute
                assert (metric["interval"], metric["count"], metric["failureLimit"]) == \
                    ("1m", 10, 0), (name, metric["name"])


# --- the queries, with Prometheus' own tools -----------------------------------------------------
SAMPLE_ARGS = {"canary-hash": "c1", "stable-hash": "s1", "namespace": NAMESPACE, "job": RELEASE,
               "window": "5m", "prometheus": "http://prometheus:9090"}
POD = {"s1": "10.0.0.1:3000", "c1": "10.0.0.2:3000"}


def _queries() -> dict[str, str]:
    """`<template>:<metric>` -> its PromQL with the sample arguments."""
    return {f"{name}:{metric['name']}":
            ARG.sub(lambda m: SAMPLE_ARGS[m.group(1)], metric["provider"]["prometheus"]["query"])
            for name, template in _templates().items() for metric in template["spec"]["metrics"]}


def _series(slot: str, version: str, *, ok: int, failed: int, fast: int, cats: int, dogs: int,
            unsure: int, ood: int) -> list[dict]:
    """One pod's series, per minute: `ok`/`failed` answers (`fast` of them within 0.5 s, the rest
    within 5 s), `cats`/`dogs` predictions (`unsure` of them with confidence <= 0.6, the rest
    above 0.9) and `ood` out-of-distribution ones."""
    pod = f'job="{RELEASE}", namespace="{NAMESPACE}", instance="{POD[slot]}"'
    own = f'job="{RELEASE}", namespace="{NAMESPACE}", version="{version}", slot="{slot}"'
    total = ok + failed
    made = cats + dogs

    def grows(per_minute: int) -> str:
        return f"0+{per_minute}x20"

    return [
        {"series": f'catsdogs_model_info{{{pod}, name="CatsDogsCNN", version="{version}", '
                   f'slot="{slot}"}}', "values": "1x20"},
        {"series": f'bentoml_service_request_total{{{pod}, endpoint="/predict", '
                   f'http_response_code="200"}}', "values": grows(ok)},
        {"series": f'bentoml_service_request_total{{{pod}, endpoint="/predict", '
                   f'http_response_code="500"}}', "values": grows(failed)},
        *({"series": f'bentoml_service_request_duration_seconds_bucket{{{pod}, '
                     f'endpoint="/predict", le="{le}"}}', "values": grows(count)}
          for le, count in (("0.5", fast), ("5", total), ("+Inf", total))),
        {"series": f'catsdogs_predictions_total{{{own}, label="cat"}}', "values": grows(cats)},
        {"series": f'catsdogs_predictions_total{{{own}, label="dog"}}', "values": grows(dogs)},
        {"series": f'catsdogs_out_of_distribution_total{{{own}}}', "values": grows(ood)},
        *({"series": f'catsdogs_prediction_confidence_bucket{{{own}, le="{le}"}}',
           "values": grows(count)}
          for le, count in (("0.6", unsure), ("0.9", unsure), ("1.0", made), ("+Inf", made))),
    ]


STABLE = _series("s1", "3", ok=60, failed=0, fast=60, cats=45, dogs=15, unsure=6, ood=0)
# the same version again as the new one: what a healthy new version looks like on mirrored traffic
HEALTHY = _series("c1", "4", ok=60, failed=0, fast=60, cats=45, dogs=15, unsure=6, ood=0)
# swapped labels, 1 answer in 10 a 500, slow, unsure, a fifth out of distribution
BROKEN = _series("c1", "4", ok=54, failed=6, fast=50, cats=15, dogs=45, unsure=40, ood=12)
# what each query gives at 10 minutes, with a 5-minute window (60 requests a minute on each pod),
# to 4 decimals (histogram_quantile interpolates inside a bucket: 0.9 + 0.1 x 24/54 = 0.9444)
EXPECTED = {
    "healthy": {"requests": 300.0, "error-ratio": 0.0, "p99-seconds": 0.495,
                "confidence-drop": 0.0, "confidence-median": 0.9444, "label-share-gap": 0.0,
                "ood-ratio-gap": 0.0},
    "broken": {"requests": 300.0, "error-ratio": 0.1, "p99-seconds": 4.73,
               "confidence-drop": -0.4944, "confidence-median": 0.45,
               "label-share-gap": 0.5, "ood-ratio-gap": 0.2},
}


def _passes(condition: str, value: float) -> bool:
    """An analysis condition (Argo's expr language, the subset used here) on one result."""
    python = (condition.replace("||", " or ").replace("&&", " and ")
              .replace("isNaN(", "math.isnan(").replace("result[0]", repr(value)))
    assert re.fullmatch(r"[\w\s.()<>=+\-'\"]*", python.replace("math.isnan", "")), python
    return bool(eval(python, {"math": math, "__builtins__": {}}))  # noqa: S307 - fixed subset


def _tool(name: str) -> str:
    import shutil

    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: `make system-deps` installs Debian's prometheus package")
    return found


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = tmp_path / "queries.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "argo-rollouts", "rules": [
        {"record": f"analysis:{name.replace(':', '_').replace('-', '_')}", "expr": query}
        for name, query in _queries().items()]}]}))
    result = subprocess.run([_tool("promtool"), "check", "rules", str(rules)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_queries())} rules found" in result.stdout


def test_queries_compute_their_gate_and_the_gates_decide(tmp_path: Path) -> None:
    queries = _queries()
    records = {name: f"analysis:{name.replace(':', '_').replace('-', '_')}" for name in queries}
    rules = tmp_path / "queries.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "argo-rollouts", "rules": [
        {"record": records[name], "expr": query} for name, query in queries.items()]}]}))
    cases = []
    for case, canary in (("healthy", HEALTHY), ("broken", BROKEN)):
        cases.append({"interval": "1m", "input_series": STABLE + canary, "promql_expr_test": [
            {"expr": f"round({records[name]}, 0.0001)", "eval_time": "10m",
             "exp_samples": [{"labels": "{}", "value": EXPECTED[case][name.split(":")[1]]}]}
            for name in queries]})
    tests = tmp_path / "queries-test.yml"
    tests.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m",
                                     "tests": cases}))
    result = subprocess.run([_tool("promtool"), "test", "rules", str(tests)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # the gates on those values: the healthy version passes every one, the broken one fails every
    # gate but the request count (which only says there was enough traffic to judge)
    for name, template in _templates().items():
        for metric in template["spec"]["metrics"]:
            healthy = EXPECTED["healthy"][metric["name"]]
            broken = EXPECTED["broken"][metric["name"]]
            assert _passes(metric["successCondition"], healthy), (name, metric["name"])
            assert _passes(metric["successCondition"], broken) == (metric["name"] == "requests"), \
                (name, metric["name"], broken)
            if "failureCondition" in metric:   # too few requests: inconclusive, not failed
                assert not _passes(metric["failureCondition"], 0.0)
                assert not _passes(metric["successCondition"], 0.0)
