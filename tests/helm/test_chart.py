"""The Helm chart in helm/catsdogs: lint, offline schema validation of the rendered manifests
against Kubernetes 1.30 and 1.33, and assertions on the rendered objects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helm.conftest import (
    CHART_DIR,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    Renderer,
    by_kind,
    one,
    run_helm,
    template_args,
)
from tests.secret_values import secret_values

FULLNAME = f"{RELEASE}-catsdogs"
VALUE_SETS = [pytest.param((), id="defaults")] + [
    pytest.param((path,), id=path.stem) for path in CI_VALUES
]
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
# Custom resources have no schema in kubernetes-validate's bundle: each is checked against its own
# schema below instead (kubernetes-validate would only print "Couldn't find schema" and pass).
CRD_KINDS = {"ServiceMonitor"}

# The part of the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1) this chart
# renders, with its documented types and duration pattern; unknown fields are refused here (the API
# server would silently prune them).
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "labels": LABEL_MAP},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": LABEL_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                    },
                },
            },
        },
    },
}


# CATSDOGS_* variables the chart sets whatever the `config` values: the drain file (preStop), the
# slot and the kept pictures' folder (the default `pictures.enabled`)
ALWAYS_SET = {"CATSDOGS_DRAIN_FILE", "CATSDOGS_SLOT", "CATSDOGS_PREDICTION_LOG_SAMPLE_DIR"}


def deployment(objects: list[dict]) -> dict:
    return one(objects, "Deployment")


def container(objects: list[dict]) -> dict:
    (bento,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return bento


def env_of(objects: list[dict]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(objects)["env"] if "value" in item}


def test_ci_values_cover_the_required_scenarios() -> None:
    names = {path.stem for path in CI_VALUES}
    assert {"gpu-values", "autoscaling-monitoring-values", "loadbalancer-ingress-values"} <= names


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(helm: Path, values: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    for path in values:
        args += ["--values", str(path)]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_manifests_validate_strictly(helm: Path, tmp_path: Path,
                                              values: tuple[Path, ...], kube_version: str) -> None:
    rendered = run_helm(helm, *template_args(values, kube_version=kube_version))
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    builtin = [obj for obj in objects if obj["kind"] not in CRD_KINDS]
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(cli), "--strict", "-k", kube_version, str(manifest)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Every object was checked against a bundled schema (a missing schema only warns).
    assert "Couldn't find schema" not in output, output
    assert output.count("passed for resource") == len(builtin), output


def test_kubernetes_validate_catches_an_invalid_field(helm: Path, tmp_path: Path) -> None:
    """The validator really is strict: an unknown Deployment field fails it."""
    rendered = run_helm(helm, *template_args())
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(rendered.stdout.replace("revisionHistoryLimit:", "revisionHistoryLimits:"))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(cli), "--strict", "--quiet", "-k", "1.33.0", str(manifest)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "revisionHistoryLimits" in result.stdout + result.stderr


def test_defaults(render: Renderer) -> None:
    objects = render()
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == ["Deployment", "PersistentVolumeClaim", "Pod", "PodDisruptionBudget",
                     "Service", "ServiceAccount"]
    spec = deployment(objects)["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    bento = container(objects)
    assert bento["image"] == "registry.example.com/catsdogs:0.1.0"  # appVersion
    assert bento["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert bento["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert bento["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert bento["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = bento["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model loading time
    assert set(bento["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(bento["resources"]["requests"])
    assert {"cpu", "memory"} <= set(bento["resources"]["limits"])
    service = one(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_security_context_and_scratch_volumes(render: Renderer) -> None:
    objects = render()
    pod = deployment(objects)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1034  # the Bento image's bentoml user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    security = container(objects)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # BentoML writes to $BENTOML_HOME and /tmp: both are emptyDir volumes.
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    bentoml_home = env_of(objects)["BENTOML_HOME"]
    for path in ("/tmp", bentoml_home):
        assert "emptyDir" in volumes[mounts[path]]
    assert not bentoml_home.startswith("/home/bentoml/bento")  # the Bento itself stays read-only


def test_pictures_claim_read_write_in_the_serving_pods(render: Renderer) -> None:
    """The kept pictures on a ReadWriteMany claim, read-write at /pictures (named by
    CATSDOGS_PREDICTION_LOG_SAMPLE_DIR): the path the stage pods mount it at read-only."""
    from catsdogs.settings import PICTURES_MOUNT

    objects = render()
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{RELEASE}-catsdogs-pictures"
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"],
                             "resources": {"requests": {"storage": "10Gi"}}}
    pod = deployment(objects)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    [mount] = [m for m in container(objects)["volumeMounts"] if m["mountPath"] == PICTURES_MOUNT]
    assert not mount.get("readOnly", False)
    assert volumes[mount["name"]]["persistentVolumeClaim"] == {
        "claimName": f"{RELEASE}-catsdogs-pictures"}
    assert env_of(objects)["CATSDOGS_PREDICTION_LOG_SAMPLE_DIR"] == PICTURES_MOUNT
    # the release `catsdogs` (its full name is `catsdogs`, as with this override) makes the
    # claim helm/airflow/values.yaml gives the stage pods (CATSDOGS_K8S_PICTURES_CLAIM)
    airflow = yaml.safe_load((REPO_ROOT / "helm" / "airflow" / "values.yaml").read_text())
    [stage_claim] = [item["value"] for item in airflow["env"]
                     if item["name"] == "CATSDOGS_K8S_PICTURES_CLAIM"]
    default = render(sets=["fullnameOverride=catsdogs"])
    assert one(default, "PersistentVolumeClaim")["metadata"]["name"] == stage_claim

    objects = render(sets=["pictures.existingClaim=nfs-pictures", "pictures.storageClass=nfs-csi",
                           "pictures.accessModes={ReadWriteOnce}", "pictures.size=2Gi"])
    assert by_kind(objects, "PersistentVolumeClaim") == []
    pod = deployment(objects)["spec"]["template"]["spec"]
    assert {"name": "pictures", "persistentVolumeClaim": {"claimName": "nfs-pictures"}} in (
        pod["volumes"])
    objects = render(sets=["pictures.storageClass=nfs-csi", "pictures.accessModes={ReadWriteOnce}",
                           "pictures.size=2Gi"])
    assert one(objects, "PersistentVolumeClaim")["spec"] == {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "nfs-csi",
        "resources": {"requests": {"storage": "2Gi"}}}

    # off, and a release installed before `pictures` existed upgraded with --reuse-values (its
    # old values have no `pictures` key): no claim, no mount, no variable, and no render error
    for sets in (["pictures.enabled=false"], ["pictures=null"]):
        objects = render(sets=sets)
        assert by_kind(objects, "PersistentVolumeClaim") == []
        assert "CATSDOGS_PREDICTION_LOG_SAMPLE_DIR" not in env_of(objects)
        assert PICTURES_MOUNT not in {m["mountPath"] for m in container(objects)["volumeMounts"]}
        assert "pictures" not in {v["name"] for v in
                                  deployment(objects)["spec"]["template"]["spec"]["volumes"]}


def test_service_settings_reach_the_environment(render: Renderer) -> None:
    env = env_of(render())
    assert env["CATSDOGS_MAX_UPLOAD_BYTES"] == "10485760"  # an integer, not 1.048576e+07
    assert env["CATSDOGS_TORCH_THREADS"] == "2"  # matches the 2-CPU limit
    assert "CATSDOGS_BENTO_MODEL" not in env  # empty: the service's default
    assert "CATSDOGS_MAX_BATCH_SIZE" not in env  # null: the service's default
    env = env_of(render(sets=["config.torchThreads=null", "config.modelTag=catsdogs_cnn:abc",
                              "config.maxBatchSize=8", "env.EXTRA_FLAG=on",
                              "env.CATSDOGS_DECODE_THREADS=1"]))
    assert "CATSDOGS_TORCH_THREADS" not in env
    assert env["CATSDOGS_BENTO_MODEL"] == "catsdogs_cnn:abc"
    assert env["CATSDOGS_MAX_BATCH_SIZE"] == "8"
    assert env["EXTRA_FLAG"] == "on"
    assert env["CATSDOGS_DECODE_THREADS"] == "1"  # the env map wins


def test_setting_names_are_the_ones_the_service_reads(render: Renderer) -> None:
    """Every CATSDOGS_* variable the chart can set is read somewhere in bentoservice/: a field of
    its settings (pydantic-settings, prefix CATSDOGS_) or a name in its source."""
    from catsdogs.settings import ServingSettings as Settings

    source = "\n".join(path.read_text() for path in (REPO_ROOT / "bentoservice").glob("*.py"))
    prefix = Settings.model_config["env_prefix"]
    read_by_service = set(re.findall(r"CATSDOGS_[A-Z0-9_]+", source)) | {
        f"{prefix}{name}".upper() for name in Settings.model_fields}
    sets = ["config.modelTag=m:1", "config.maxBatchSize=4", "config.maxLatencyMs=10",
            "config.maxUploadBytes=100", "config.torchThreads=1", "config.decodeThreads=1",
            "config.device=cpu", "config.runtime=openvino-int8"]
    chart_names = {item["name"] for item in container(render(sets=sets))["env"]
                   if item["name"].startswith("CATSDOGS_")}
    assert len(chart_names - ALWAYS_SET) == len(sets)
    assert chart_names <= read_by_service, chart_names - read_by_service


def test_gpu_limit_only_when_enabled(render: Renderer) -> None:
    cpu = render()
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert "nodeSelector" not in deployment(cpu)["spec"]["template"]["spec"]
    assert "tolerations" not in deployment(cpu)["spec"]["template"]["spec"]
    gpu = render(values=[CHART_DIR / "ci" / "gpu-values.yaml"])
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = deployment(gpu)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_autoscaling_and_service_monitor(render: Renderer) -> None:
    objects = render(values=[CHART_DIR / "ci" / "autoscaling-monitoring-values.yaml"])
    assert "replicas" not in deployment(objects)["spec"]  # the HPA owns the count
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": FULLNAME}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    service = one(objects, "Service")
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_load_balancer_and_ingress(render: Renderer) -> None:
    objects = render(values=[CHART_DIR / "ci" / "loadbalancer-ingress-values.yaml"])
    service = one(objects, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    ingress = one(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"number": 80}}
    assert ingress["spec"]["tls"] == [{"secretName": "catsdogs-tls",
                                       "hosts": ["catsdogs.example.com"]}]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_standard_labels_on_every_object(render: Renderer, values: tuple[Path, ...]) -> None:
    objects = render(values=values)
    selector = deployment(objects)["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "catsdogs",
                        "app.kubernetes.io/instance": RELEASE,
                        "app.kubernetes.io/component": "inference"}
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "catsdogs", obj["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", obj["kind"]
        assert labels["app.kubernetes.io/part-of"] == "catsdogs", obj["kind"]
        assert labels["helm.sh/chart"] == "catsdogs-0.1.0", obj["kind"]
        assert "app.kubernetes.io/version" in labels, obj["kind"]
    pod_labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert one(objects, "Service")["spec"]["selector"] == selector


def test_helm_test_hook_calls_readyz(render: Renderer) -> None:
    objects = render()
    (pod,) = [obj for obj in by_kind(objects, "Pod")
              if obj["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    script = " ".join(pod["spec"]["containers"][0]["command"])
    assert f"http://{FULLNAME}:80/readyz" in script
    assert pod["spec"]["restartPolicy"] == "Never"
    # The Service and the PDB must not select the test pod.
    selector = one(objects, "Service")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()


def test_notes_explain_how_to_call_it(helm: Path, tmp_path: Path) -> None:
    """NOTES.txt rendered by helm's engine (helm template skips it, helm install needs a cluster):
    a copy of the chart renders it through tpl into a ConfigMap."""
    chart = tmp_path / "catsdogs"
    shutil.copytree(CHART_DIR, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-copy.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        "  notes: {{ tpl (.Files.Get \"notes-copy.txt\") . | quote }}\n")
    for sets, expected in [
        ((), "port-forward service/rel-catsdogs 3000:80"),
        (("service.type=LoadBalancer",), "http://$ADDRESS:80/predict"),
        (("ingress.enabled=true",), "http://catsdogs.example.com/predict"),
    ]:
        args = ["template", RELEASE, str(chart), "-n", NAMESPACE,
                "--show-only", "templates/zz-notes.yaml"]
        for pair in sets:
            args += ["--set", pair]
        result = run_helm(helm, *args)
        assert result.returncode == 0, result.stderr
        notes = yaml.safe_load(result.stdout)["data"]["notes"]
        assert expected in notes
        assert "curl -F image=@cat.jpg" in notes
        assert "helm test rel" in notes


def test_drains_on_shutdown(render: Renderer) -> None:
    """A deleted pod fails /readyz first (the preStop hook creates the service's drain file), waits
    the readiness probe's thresholds out, and only then gets SIGTERM, with a grace period that
    covers the longest request the service can hold."""
    from catsdogs.settings import ServingSettings

    objects = render()
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    drain = values["drain"]
    bento = container(objects)
    env = env_of(objects)
    assert env["CATSDOGS_DRAIN_FILE"] == drain["file"] == "/tmp/catsdogs-draining"
    assert "drain_file" in ServingSettings.model_fields  # the service reads it
    # the file lies on the writable /tmp emptyDir (the root file system is read-only)
    mounts = {m["mountPath"] for m in bento["volumeMounts"]}
    assert str(Path(drain["file"]).parent) in mounts
    command = bento["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["python", "-m", "catsdogs.deployment.drain", "--port", "3000",
                       "--probe-seconds", str(drain["preStopSeconds"]),
                       "--longest-request-seconds", str(drain["longestRequestSeconds"])]
    # the hook's options are the module's (argparse exits 2 on an unknown or a missing one)
    from catsdogs.deployment.drain import arguments
    parsed = arguments().parse_args(command[3:])
    assert (parsed.port, parsed.probe_seconds, parsed.longest_request_seconds) == (3000, 15, 130)
    readiness = bento["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"
    assert drain["preStopSeconds"] >= readiness["periodSeconds"] * readiness["failureThreshold"]
    # the longest request: its head (CATSDOGS_HEADER_TIMEOUT_S), then BentoML's request timeout
    timeouts = {int(t) for t in re.findall(r'traffic=\{"timeout": (\d+)\}',
                                            (REPO_ROOT / "bentoservice" / "service.py").read_text())}
    assert len(timeouts) == 1
    longest = ServingSettings.model_fields["header_timeout_s"].default + timeouts.pop()
    assert drain["longestRequestSeconds"] >= longest == 130
    grace = deployment(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == values["terminationGracePeriodSeconds"] == 150
    assert grace >= drain["preStopSeconds"] + longest
    # the slot label on the metrics: the pod's version label, by the downward API
    (slot,) = [item for item in bento["env"] if item["name"] == "CATSDOGS_SLOT"]
    path = slot["valueFrom"]["fieldRef"]["fieldPath"]
    assert path == "metadata.labels['app.kubernetes.io/version']"
    assert "app.kubernetes.io/version" in deployment(objects)["spec"]["template"]["metadata"]["labels"]
    (slot,) = [item for item in container(render(sets=["slotLabel=rollouts-pod-template-hash"]))[
        "env"] if item["name"] == "CATSDOGS_SLOT"]
    assert slot["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['rollouts-pod-template-hash']"
    longer = render(sets=["drain.preStopSeconds=30", "terminationGracePeriodSeconds=200"])
    assert container(longer)["lifecycle"]["preStop"]["exec"]["command"][6] == "30"


@pytest.mark.parametrize(("sets", "message"), [
    (["terminationGracePeriodSeconds=60"],
     "terminationGracePeriodSeconds (60) must be at least drain.preStopSeconds + "
     "drain.longestRequestSeconds (145 s)"),
    (["drain.preStopSeconds=5"], "drain.preStopSeconds (5) must cover the readiness probe's "
     "periodSeconds x failureThreshold (15 s)"),
    (["probes.readiness.periodSeconds=10"], "(30 s)"),
])
def test_chart_refuses_a_drain_shorter_than_probes_or_requests(helm: Path, sets: list[str],
                                                               message: str) -> None:
    result = run_helm(helm, *template_args(sets=sets))
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(("sets", "message"), [
    (["drain.file=tmp/x"], "drain.file"),
    (["slotLabel=a label"], "slotLabel"),
    (["replicaCount=two"], "replicaCount: Invalid type. Expected: integer, given: string"),
    (["gpu.enabled=yes"], "gpu.enabled: Invalid type. Expected: boolean, given: string"),
    (["config.maxBatchSize=lots"], "config.maxBatchSize"),
    (["config.device=tpu"], "config.device"),
    (["replicas=3"], "Additional property replicas is not allowed"),
    (["service.type=External"], "service.type"),
    (["probes.liveness.path=livez"], "probes.liveness.path"),
])
def test_schema_refuses_wrong_values(helm: Path, sets: list[str], message: str) -> None:
    result = run_helm(helm, *template_args(sets=sets))
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_fetch_tools_is_idempotent(helm: Path) -> None:
    """A second fetch with the checked binary in place leaves it untouched."""
    before = os.stat(helm)
    result = subprocess.run([sys.executable, "scripts/fetch_tools.py"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    after = os.stat(helm)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    version = run_helm(helm, "version", "--short")
    assert version.stdout.startswith("v3.17.2")


def test_api_keys_come_from_a_secret_by_reference(render: Renderer) -> None:
    """Off by default; with `apiKeys.secretName` the Secret's file is mounted read-only and
    named by CATSDOGS_API_KEYS_FILE: the keys themselves are never in the values or the pod."""
    objects = render()
    assert "CATSDOGS_API_KEYS_FILE" not in env_of(objects)
    assert "api-keys" not in {v["name"] for v in deployment(objects)["spec"]["template"]["spec"]
                              ["volumes"]}
    objects = render(sets=["apiKeys.secretName=catsdogs-api-keys"])
    pod = deployment(objects)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["api-keys"]["secret"] == {"secretName": "catsdogs-api-keys",
                                             "items": [{"key": "keys", "path": "keys"}]}
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    assert mounts["api-keys"]["readOnly"] is True
    assert env_of(objects)["CATSDOGS_API_KEYS_FILE"] == (
        mounts["api-keys"]["mountPath"] + "/keys")


@pytest.mark.parametrize("path", [CHART_DIR / "values.yaml", *CI_VALUES], ids=lambda p: p.stem)
def test_no_values_file_holds_a_secret(path: Path) -> None:
    """Secrets by reference only (apiKeys.secretName, imagePullSecrets names): no password,
    key, token or connection is filled in, in the defaults or in any CI values file."""
    assert secret_values(yaml.safe_load(path.read_text())) == [], path
