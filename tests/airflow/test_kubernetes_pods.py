"""Kubernetes mode (`CATSDOGS_RUNNER=kubernetes`) without a cluster: every task's pod is built the way
the operator submits it (template rendering, `prepare_run`, then the provider's own
`build_pod_request_obj`, against a kube config that points nowhere), serialised by the `kubernetes`
client and validated against the Kubernetes API schemas (kubernetes-validate, strict, as
tests/helm does). Then: GPU scheduling only on GPU stages and only when the run asks, the claim at
/data, Kaggle credentials only as `secretKeyRef`, the MLflow URI, the stage table's resources, the
summary through the XCom sidecar, the command line a shell really splits into the stage's argv,
and final failures."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from kubernetes.client import ApiClient

from catsdogs.config import load_params
from catsdogs.orchestration.runners.common import MlflowRunLink, command_template
from catsdogs.orchestration.runners.kubernetes import (
    POD_SUMMARY_FILE,
    StageKubernetesPodOperator,
    cpu_threads,
    kubernetes_settings,
)
from catsdogs.orchestration.stage_table import PIPELINE, STAGES
from tests.airflow.harness import REPO_ROOT
from tests.secret_values import secret_values

KUBE_VERSIONS = ["1.30.0", "1.33.0", "1.37.0"]
SECRET = "s3cr3t-kaggle-key-value"
MLFLOW_SECRET = "s3cr3t-mlflow-service-password"
RUN_ID = "manual__2026-11-30T20:00:00+00:00"
MLFLOW_URI = "http://mlflow.catsdogs.svc.cluster.local:5000"
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: nobody, user: {token: not-a-token}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody}}]
current-context: nowhere
"""
SETTINGS = {
    "CATSDOGS_WORKER_IMAGE": "registry.example.com/catsdogs-worker:1.2",
    "CATSDOGS_K8S_NAMESPACE": "ml",
    "CATSDOGS_K8S_DATA_CLAIM": "shared-photos",
    "CATSDOGS_K8S_PICTURES_CLAIM": "kept-uploads",
    "CATSDOGS_K8S_KAGGLE_SECRET": "kaggle-api",
    "CATSDOGS_K8S_MLFLOW_SECRET": "mlflow-login",
    "CATSDOGS_K8S_SERVICE_ACCOUNT": "catsdogs-stages",
    "CATSDOGS_WORKER_MLFLOW_URI": MLFLOW_URI,
    # The Airflow side holds Kaggle credentials too: none of them may reach a pod spec.
    "KAGGLE_USERNAME": "someone",
    "KAGGLE_KEY": SECRET,
    # and the MLflow service account's login (compose-style): only a Secret reference may.
    "MLFLOW_TRACKING_USERNAME": "catsdogs-pipeline",
    "MLFLOW_TRACKING_PASSWORD": MLFLOW_SECRET,
    "AIRFLOW_CONN_KAGGLE_DEFAULT": json.dumps({"conn_type": "generic", "login": "someone",
                                               "password": SECRET}),
}


def kube_connection(folder: Path) -> dict[str, str]:
    """The provider's `kubernetes_default` connection, pointing at a kube config whose server does
    not exist: building a pod reads the config but never calls the API server."""
    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    extra = {"kube_config_path": str(kubeconfig)}
    return {"AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps({"conn_type": "kubernetes",
                                                           "extra": extra})}


@pytest.fixture
def k8s_dag(parse_dag, tmp_path: Path) -> Any:
    """The DAG parsed in kubernetes mode with the settings above."""
    return parse_dag("kubernetes", **kube_connection(tmp_path), **SETTINGS)


def run_params(dag: Any, **changes: Any) -> dict[str, Any]:
    """A run's params: the trigger form's defaults with some changed, validated like a trigger."""
    params = copy.deepcopy(dag.params)
    params.update(changes)
    return params.validate()


def build_pod(dag: Any, task_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """The pod the task would submit for a run with these params, as the API server receives it.
    The same steps as a real try: render the template fields, `prepare_run`, the provider's own
    `build_pod_request_obj` (labels, XCom sidecar, pod mutation hook included), on a copy of the
    task (rendering replaces the templates: each real try starts from a fresh operator too)."""
    task = copy.deepcopy(dag.get_task(task_id))
    ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id=task_id, map_index=-1, try_number=1)
    context = {"params": params, "dag": dag, "run_id": RUN_ID, "ti": ti}
    task.render_template_fields(context)
    task.prepare_run(context)
    return ApiClient().sanitize_for_serialization(task.build_pod_request_obj(context))


def base(pod: dict[str, Any]) -> dict[str, Any]:
    """The stage's container (the provider names it `base`)."""
    [container] = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    return container


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in base(pod).get("env") or []}


@pytest.fixture
def pods(k8s_dag: Any) -> dict[tuple[str, bool], dict[str, Any]]:
    """Every task's pod, for a run with GPUs off and one with GPUs on."""
    return {(task.task_id, gpu): build_pod(k8s_dag, task.task_id, run_params(k8s_dag, gpu=gpu))
            for task in k8s_dag.tasks for gpu in (False, True)}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_pod_validates_against_the_kubernetes_schema(pods, kube_version: str) -> None:
    assert len(pods) == 2 * len(PIPELINE)
    for (task_id, gpu), pod in pods.items():
        try:
            kubernetes_validate.validate(pod, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{task_id} (gpu={gpu}) on Kubernetes {kube_version}: {exc}")


def test_the_validator_refuses_a_wrong_pod(pods) -> None:
    """Not vacuous: an unknown field, a wrong type and a misspelt volume source all fail."""
    pod = pods[("train", True)]
    for broken in (
        {**pod, "spec": {**pod["spec"], "nodeSelectors": {"a": "b"}}},
        {**pod, "spec": {**pod["spec"], "restartPolicy": ["Never"]}},
        {**pod, "spec": {**pod["spec"], "volumes": [{"name": "data", "pvc": {"claimName": "x"}}]}},
    ):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, "1.33.0", strict=True)


def test_gpu_limit_selector_and_tolerations_only_on_gpu_stages_when_the_run_asks(pods) -> None:
    gpu_stages = {stage.name for stage in PIPELINE if stage.needs_gpu}
    assert gpu_stages == {"train", "promote"}
    for (task_id, gpu), pod in pods.items():
        limits = base(pod)["resources"]["limits"]
        spec = pod["spec"]
        if gpu and task_id in gpu_stages:
            assert limits["nvidia.com/gpu"] == "1"
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                            "effect": "NoSchedule"}]
        else:
            assert "nvidia.com/gpu" not in limits, task_id
            assert not spec.get("nodeSelector"), task_id
            assert not spec.get("tolerations"), task_id
        for sidecar in spec["containers"]:
            if sidecar["name"] != "base":
                assert "nvidia.com/gpu" not in json.dumps(sidecar)


def test_gpu_node_selector_and_tolerations_from_the_environment(parse_dag, tmp_path) -> None:
    tolerations = [{"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoExecute",
                    "tolerationSeconds": 600}]
    dag = parse_dag("kubernetes", **kube_connection(tmp_path), CATSDOGS_K8S_GPUS="2",
                    CATSDOGS_K8S_GPU_NODE_SELECTOR='{"cloud.example.com/accelerator": "a100"}',
                    CATSDOGS_K8S_GPU_TOLERATIONS=json.dumps(tolerations))
    pod = build_pod(dag, "train", run_params(dag, gpu=True))
    assert base(pod)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["nodeSelector"] == {"cloud.example.com/accelerator": "a100"}
    assert pod["spec"]["tolerations"] == tolerations
    kubernetes_validate.validate(pod, "1.33.0", strict=True)


@pytest.mark.parametrize(("name", "value"), [
    ("CATSDOGS_K8S_GPU_NODE_SELECTOR", "gpu=true"),
    ("CATSDOGS_K8S_GPU_NODE_SELECTOR", '["gpu"]'),
    ("CATSDOGS_K8S_GPU_TOLERATIONS", '{"key": "gpu"}'),
    ("CATSDOGS_K8S_GPU_TOLERATIONS", '[{"key": "gpu", "tolerationSecond": 60}]'),
])
def test_malformed_gpu_settings_are_refused(monkeypatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        kubernetes_settings()


def test_data_claim_at_data_and_shared_memory(pods) -> None:
    for pod in pods.values():
        volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in base(pod)["volumeMounts"]}
        assert volumes[mounts["/data"]]["persistentVolumeClaim"] == {"claimName": "shared-photos"}
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory",
                                                          "sizeLimit": str(2 * 1024**3)}
        assert env_of(pod)["CATSDOGS_DATA_DIR"]["value"] == "/data"


def test_pictures_claim_read_only_at_the_services_path(pods, parse_dag, tmp_path,
                                                       monkeypatch) -> None:
    """The pictures the service keeps, at the path the prediction log holds (the serving chart
    mounts the claim read-write there), read-only in every stage pod; unset: none."""
    from catsdogs.settings import PICTURES_MOUNT

    for pod in pods.values():
        volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
        [mount] = [m for m in base(pod)["volumeMounts"] if m["mountPath"] == PICTURES_MOUNT]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["persistentVolumeClaim"] == {"claimName": "kept-uploads",
                                                                   "readOnly": True}
    monkeypatch.delenv("CATSDOGS_K8S_PICTURES_CLAIM")
    dag = parse_dag("kubernetes", **kube_connection(tmp_path))
    pod = build_pod(dag, "ingest", run_params(dag))
    assert PICTURES_MOUNT not in {m["mountPath"] for m in base(pod)["volumeMounts"]}
    assert all(v["name"] != "pictures" for v in pod["spec"]["volumes"])


def test_kaggle_credentials_only_as_secret_references_and_only_for_ingest(pods) -> None:
    for (task_id, _), pod in pods.items():
        serialised = json.dumps(pod)
        assert SECRET not in serialised, task_id
        env = env_of(pod)
        kaggle = {name: item for name, item in env.items() if name.startswith("KAGGLE")}
        if task_id != "ingest":
            assert kaggle == {}, task_id
            continue
        assert kaggle == {
            "KAGGLE_USERNAME": {"name": "KAGGLE_USERNAME", "valueFrom": {"secretKeyRef": {
                "name": "kaggle-api", "key": "username", "optional": True}}},
            "KAGGLE_KEY": {"name": "KAGGLE_KEY", "valueFrom": {"secretKeyRef": {
                "name": "kaggle-api", "key": "key", "optional": True}}},
        }
        assert not base(pod).get("envFrom")


def test_every_stage_logs_in_to_mlflow_from_a_secret_reference(pods) -> None:
    """The service account reaches each pod only as `secretKeyRef`s to CATSDOGS_K8S_MLFLOW_SECRET:
    neither the password nor the username of the Airflow side is in any pod spec."""
    for (task_id, _), pod in pods.items():
        serialised = json.dumps(pod)
        assert MLFLOW_SECRET not in serialised and "catsdogs-pipeline" not in serialised, task_id
        env = env_of(pod)
        assert {name: env[name] for name in ("MLFLOW_TRACKING_USERNAME",
                                             "MLFLOW_TRACKING_PASSWORD")} == {
            "MLFLOW_TRACKING_USERNAME": {"name": "MLFLOW_TRACKING_USERNAME", "valueFrom": {
                "secretKeyRef": {"name": "mlflow-login", "key": "username", "optional": True}}},
            "MLFLOW_TRACKING_PASSWORD": {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {
                "secretKeyRef": {"name": "mlflow-login", "key": "password", "optional": True}}},
        }, task_id


def test_image_namespace_mlflow_and_settings(pods) -> None:
    for (task_id, _), pod in pods.items():
        assert pod["metadata"]["namespace"] == "ml"
        assert pod["metadata"]["name"].startswith(f"catsdogs-{task_id}-")
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == task_id
        assert pod["metadata"]["labels"]["airflow_kpo_in_cluster"] == "False"
        assert base(pod)["image"] == "registry.example.com/catsdogs-worker:1.2"
        assert pod["spec"]["serviceAccountName"] == "catsdogs-stages"
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == 50000
        env = env_of(pod)
        assert env["MLFLOW_TRACKING_URI"]["value"] == MLFLOW_URI
        assert env["AIRFLOW_CTX_DAG_RUN_ID"]["value"] == RUN_ID
        assert env["CATSDOGS_AIRFLOW_RUN_URL"]["value"].endswith(
            "/dags/catsdogs_training/runs/manual__2026-11-30T20%3A00%3A00%2B00%3A00")
        for container in pod["spec"]["containers"]:
            assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}


def test_resources_come_from_the_stage_table(pods) -> None:
    for stage in STAGES:
        assert QUANTITY.match(stage.cpu) and QUANTITY.match(stage.memory), stage.name
    for stage in PIPELINE:
        pod = pods[(stage.name, False)]
        assert base(pod)["resources"] == {"requests": {"cpu": stage.cpu, "memory": stage.memory},
                                          "limits": {"memory": stage.memory}}
        # torch's thread pool follows the request, not the node's core count.
        assert env_of(pod)["OMP_NUM_THREADS"]["value"] == str(cpu_threads(stage.cpu))


def test_the_summary_travels_through_the_xcom_sidecar(k8s_dag, pods) -> None:
    for (task_id, _), pod in pods.items():
        assert k8s_dag.get_task(task_id).do_xcom_push is True
        assert env_of(pod)["CATSDOGS_SUMMARY_FILE"]["value"] == POD_SUMMARY_FILE
        xcom_dir = str(Path(POD_SUMMARY_FILE).parent)
        volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
        for container in pod["spec"]["containers"]:  # the stage writes, the sidecar reads
            [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == xcom_dir]
            assert "emptyDir" in volumes[mount["name"]]
        assert [c["name"] for c in pod["spec"]["containers"]] == ["base", "airflow-xcom-sidecar"]


def test_the_pod_command_is_the_stage_command(k8s_dag, pods, tmp_path: Path) -> None:
    """The container's `sh -c` line, run by a real shell, calls `catsdogs <stage>` with the same
    argv the other modes render; the overrides load as the run's params."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "catsdogs"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    params = run_params(k8s_dag, epochs=3, data_source="dir:/data/my photos",
                        overrides=["transform.image_size=128"])
    template = k8s_dag.get_template_env()
    for stage in PIPELINE:
        pod = build_pod(k8s_dag, stage.name, params)
        command, args = base(pod)["command"], base(pod)["args"]
        assert command == ["/bin/sh", "-c"]
        expected = template.from_string(command_template(stage)).render(params=params)
        assert args == ["exec " + expected]
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30,
                                env={"PATH": f"{fake_bin}{os.pathsep}/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        argv = json.loads(result.stdout)
        assert argv == shlex.split(expected)[1:]
        assert argv[0] == stage.name
        loaded = load_params("params.yaml", argv[2::2])
        assert (loaded.train.epochs, loaded.data.source) == (3, "dir:/data/my photos")
        assert loaded.transform.image_size == 128


def test_final_exit_codes_fail_at_once_and_the_summary_is_returned(k8s_dag, monkeypatch) -> None:
    validate, ingest, train = (k8s_dag.get_task(name) for name in ("validate", "ingest", "train"))
    assert list(ingest.skip_on_exit_code) == [3]  # a gate refusal; anything else retries
    assert list(validate.skip_on_exit_code) == list(range(1, 256))  # retryable=False
    assert all(task.retries >= 1 for task in (validate, ingest, train))

    def refused() -> None:  # what the provider's cleanup raises for a skip_on_exit_code
        raise AirflowSkipException("Pod catsdogs-validate-x returned exit code 3. Skipping.")

    with pytest.raises(AirflowFailException, match="final"):
        validate._summary_of(refused)

    run_id = "0123456789abcdef0123456789abcdef"
    summary = {"stage": "train", "status": "done", "skipped": False, "message": "ok",
               "run_id": run_id, "experiment_id": "2"}
    assert train._summary_of(lambda: summary) == summary
    monkeypatch.setenv("CATSDOGS_MLFLOW_UI_URL", "http://mlflow.example.com")
    assert MlflowRunLink().get_link(train, ti_key=None) == \
        f"http://mlflow.example.com/#/experiments/2/runs/{run_id}?workflowType=machine_learning"
    assert ingest._summary_of(lambda: None) is None  # no summary file: logged, not fatal


class Submitted(Exception):
    """Raised where the provider would send the pod to the API server."""


def test_execute_submits_the_pod_the_tests_build(k8s_dag) -> None:
    """`execute` itself, up to the API call: the pod it hands to `get_or_create_pod` is the one
    `build_pod` gives (only the random name suffix differs)."""
    params = run_params(k8s_dag, gpu=True)
    for name in ("ingest", "train"):
        expected = build_pod(k8s_dag, name, params)
        task = copy.deepcopy(k8s_dag.get_task(name))
        submitted: list[Any] = []

        def capture(pod_request_obj: Any, context: Any, sink: list[Any] = submitted) -> Any:
            sink.append(ApiClient().sanitize_for_serialization(pod_request_obj))
            raise Submitted

        task.get_or_create_pod = capture
        ti = types.SimpleNamespace(dag_id=k8s_dag.dag_id, task_id=name, map_index=-1, try_number=1)
        context = {"params": params, "dag": k8s_dag, "run_id": RUN_ID, "ti": ti}
        task.render_template_fields(context)
        with pytest.raises(Submitted):
            task.execute(context)
        [pod] = submitted
        for one in (pod, expected):
            one["metadata"]["name"] = one["metadata"]["name"].rsplit("-", 1)[0]
        assert pod == expected


@pytest.mark.parametrize(("cpu", "threads"), [("1", 1), ("4", 4), ("1.5", 2), ("500m", 1),
                                               ("2500m", 3)])
def test_cpu_threads_rounds_quantities_up(cpu: str, threads: int) -> None:
    assert cpu_threads(cpu) == threads


def test_operators_are_the_providers(k8s_dag) -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    assert all(isinstance(task, StageKubernetesPodOperator) for task in k8s_dag.tasks)
    assert issubclass(StageKubernetesPodOperator, KubernetesPodOperator)


# --- Airflow itself on Kubernetes: helm/airflow/values.yaml (official chart) and the data claim ---

CHART_VALUES = REPO_ROOT / "helm" / "airflow" / "values.yaml"
DATA_PVC = REPO_ROOT / "helm" / "airflow" / "data-pvc.yaml"
GIT_SYNC_ROOT = "/opt/airflow/dags/repo"  # where the official chart's git-sync checks the repo out


@pytest.fixture(scope="module")
def chart_values() -> dict[str, Any]:
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert isinstance(values, dict)
    return values


def chart_env(values: dict[str, Any]) -> dict[str, str]:
    env = {item["name"]: item["value"] for item in values["env"]}
    assert len(env) == len(values["env"]), "a variable is set twice"
    assert all(isinstance(value, str) for value in env.values()), "env values must be strings"
    return env


def test_chart_values_run_these_dags_in_kubernetes_mode(chart_values) -> None:
    from airflow import __version__ as airflow_version

    assert chart_values["executor"] in ("KubernetesExecutor", "CeleryExecutor")
    assert chart_values["airflowVersion"] == chart_values["defaultAirflowTag"] == airflow_version
    assert chart_values["images"]["airflow"]["tag"].startswith(airflow_version)
    assert chart_values["allowPodLaunching"] is True
    env = chart_env(chart_values)
    assert env["CATSDOGS_RUNNER"] == "kubernetes"
    # git-sync checks the repository out at GIT_SYNC_ROOT: the paths name folders this repo has.
    git_sync = chart_values["dags"]["gitSync"]
    assert git_sync["enabled"] is True and (REPO_ROOT / git_sync["subPath"] / "catsdogs_training.py").is_file()
    for path in (env["PYTHONPATH"], env["CATSDOGS_PARAMS"],
                 chart_values["config"]["core"]["plugins_folder"]):
        assert path.startswith(GIT_SYNC_ROOT + "/") and (REPO_ROOT / path[len(GIT_SYNC_ROOT) + 1:]).exists()


def test_chart_values_set_only_settings_the_code_reads_and_no_secret(chart_values) -> None:
    from catsdogs.settings import variables

    known = variables()
    for name in chart_env(chart_values):
        if name.startswith("CATSDOGS_"):
            assert name in known, f"{name} is no setting of catsdogs.settings"
        # Secrets reach pods from Kubernetes Secrets (CATSDOGS_K8S_KAGGLE_SECRET names one).
        assert not re.search(r"(^|_)(KEY|PASSWORD|TOKEN)$", name), f"{name}: a secret value?"
        assert not name.startswith("KAGGLE"), name


# The official chart's secrets, each by the name of a Secret (and the key it expects there).
AIRFLOW_SECRETS = {("fernetKeySecretName",): "fernet-key",
                   ("apiSecretKeySecretName",): "api-secret-key",
                   ("jwtSecretName",): "jwt-secret", ("data", "metadataSecretName"): "connection"}
def test_chart_values_take_every_airflow_secret_by_reference(chart_values) -> None:
    """Fernet key, API secret key, JWT secret and metadata connection come from Secrets the
    header's commands create (with the key the chart reads); the chart's well-known fallbacks
    (bundled Postgres, admin/admin) are off; no value anywhere holds a password, key or token."""
    header = CHART_VALUES.read_text().split("\nairflowVersion:")[0]
    for path, key in AIRFLOW_SECRETS.items():
        node: Any = chart_values
        for part in path:
            node = node[part]
        assert isinstance(node, str) and node, path
        assert re.search(rf"create secret generic {node} \\\n#\s+--from-literal={key}=", header), (
            f"{node}: no command in the header creates it with key {key}")
    assert chart_values["postgresql"]["enabled"] is False
    assert chart_values["createUserJob"]["defaultUser"]["enabled"] is False
    assert secret_values(chart_values) == []


def test_chart_environment_gives_valid_stage_pods(parse_dag, chart_values, tmp_path) -> None:
    """The DAG parsed with the values' environment (the container paths replaced by this
    checkout's), one run with the form's defaults: every stage pod validates, on the claim and
    Secret the values name, GPU stages on GPU nodes (CATSDOGS_GPU=true)."""
    env = {name: value for name, value in chart_env(chart_values).items()
           if name not in ("PYTHONPATH", "CATSDOGS_PARAMS")}
    dag = parse_dag("kubernetes", **env, **kube_connection(tmp_path))
    params = run_params(dag)
    assert params["gpu"] is True
    for task in dag.tasks:
        pod = build_pod(dag, task.task_id, params)
        for kube_version in KUBE_VERSIONS:
            kubernetes_validate.validate(pod, kube_version, strict=True)
        claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims["data"]["claimName"] == env["CATSDOGS_K8S_DATA_CLAIM"]
        # the serving chart's claim for the release `catsdogs` (helm/catsdogs, `pictures`)
        assert claims["pictures"] == {"claimName": env["CATSDOGS_K8S_PICTURES_CLAIM"],
                                      "readOnly": True}
        assert env["CATSDOGS_K8S_PICTURES_CLAIM"] == "catsdogs-pictures"
        assert pod["metadata"]["namespace"] == env["CATSDOGS_K8S_NAMESPACE"]
        assert ("nvidia.com/gpu" in base(pod)["resources"]["limits"]) is task.needs_gpu
        if task.needs_kaggle:
            refs = {item["valueFrom"]["secretKeyRef"]["name"] for name, item in env_of(pod).items()
                    if name.startswith("KAGGLE")}
            assert refs == {env["CATSDOGS_K8S_KAGGLE_SECRET"]}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_data_claim_is_read_write_many_and_valid(chart_values, kube_version: str) -> None:
    [claim] = [doc for doc in yaml.safe_load_all(DATA_PVC.read_text()) if doc]
    kubernetes_validate.validate(claim, kube_version, strict=True)
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["name"] == chart_env(chart_values)["CATSDOGS_K8S_DATA_CLAIM"]
