"""The DAG's shape: task order, schedule, the trigger form's params, the docker-mode operators'
settings (image, volume, shm, network, environment, GPUs), the rendered commands, credentials
and the MLflow link."""

from __future__ import annotations

import pytest
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable
from airflow.sdk.definitions.param import ParamValidationError

from catsdogs.config import load_params
from catsdogs.orchestration.monitoring import LABELLED_ASSET
from catsdogs.orchestration.runners import runner
from catsdogs.orchestration.runners.common import (
    SCHEDULES,
    MlflowRunLink,
    deploy_environment,
    kaggle_credentials,
    overrides_from_params,
)
from catsdogs.orchestration.runners.docker import StageDockerOperator
from catsdogs.orchestration.runners.kubernetes import StageKubernetesPodOperator
from catsdogs.orchestration.runners.local import StageBashOperator
from catsdogs.orchestration.stage_table import (
    DEFAULT_QUEUE,
    GPU_QUEUE,
    PIPELINE,
    QUEUES,
    STAGE_NAMES,
)

DEFAULT_SCHEDULE = SCHEDULES["training"][2]
ORDER = ["ingest", "validate", "prepare", "transform", "train", "promote", "deploy"]
SECRET = "s3cr3t-kaggle-key-value"


def _chain(dag) -> list[str]:
    order, task = [], dag.get_task("ingest")
    while task is not None:
        order.append(task.task_id)
        downstream = list(task.downstream_list)
        assert len(downstream) <= 1
        task = downstream[0] if downstream else None
    return order


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_tasks_run_in_stage_order(parse_dag, runner: str) -> None:
    dag = parse_dag(runner)
    assert list(STAGE_NAMES) == ORDER
    assert sorted(dag.task_ids) == sorted(ORDER)
    assert _chain(dag) == ORDER
    kind = {"docker": StageDockerOperator, "local": StageBashOperator,
            "kubernetes": StageKubernetesPodOperator}[runner]
    assert all(isinstance(task, kind) for task in dag.tasks)


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_each_task_goes_to_its_stages_celery_queue(parse_dag, runner: str) -> None:
    """The stage table decides the queue: GPU stages on `gpu`, the data stages on `default`."""
    assert QUEUES == (DEFAULT_QUEUE, GPU_QUEUE) == ("default", "gpu")
    assert {s.name: s.queue for s in PIPELINE} == {
        "ingest": "default", "validate": "default", "prepare": "default",
        "transform": "default", "train": "gpu", "promote": "gpu", "deploy": "default"}
    assert all(s.queue == (GPU_QUEUE if s.needs_gpu else DEFAULT_QUEUE) for s in PIPELINE)
    dag = parse_dag(runner)
    assert {task.task_id: task.queue for task in dag.tasks} == {s.name: s.queue for s in PIPELINE}


def test_nightly_or_on_new_labels_schedule_without_catchup(parse_dag) -> None:
    dag = parse_dag("local")
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == DEFAULT_SCHEDULE == "0 2 * * *"
    assert str(dag.timetable.timetable.timezone) == "UTC"
    # drift alone never retrains: only the labelled-data asset (enough new labels) does
    assert dag.timetable.asset_condition.uri == LABELLED_ASSET.uri == "catsdogs://feedback/labelled"
    assert dag.catchup is False
    assert dag.max_active_runs == 1


@pytest.mark.parametrize("name", ["CATSDOGS_SCHEDULE", "AIRFLOW_VAR_CATSDOGS_SCHEDULE"])
def test_schedule_is_overridable(parse_dag, name: str) -> None:
    timetable = parse_dag("local", **{name: "30 4 * * 1-5"}).timetable
    assert timetable.timetable.expression == "30 4 * * 1-5"


def test_retraining_on_new_labels_can_be_switched_off(parse_dag) -> None:
    timetable = parse_dag("local", CATSDOGS_RETRAIN_ON_LABELS="0").timetable
    assert isinstance(timetable, CronTriggerTimetable)
    assert timetable.expression == DEFAULT_SCHEDULE


def test_params_defaults_come_from_params_yaml(parse_dag) -> None:
    params, yaml_params = parse_dag("local").params, load_params("params.yaml")
    assert params["epochs"] == yaml_params.train.epochs
    assert params["lr"] == yaml_params.train.lr
    assert params["batch_size"] == yaml_params.train.batch_size
    assert params["arch"] == yaml_params.model.arch
    assert params["data_source"] == yaml_params.data.source
    assert params["promote_metric"] == yaml_params.promote.metric
    assert params["promote_min_delta"] == yaml_params.promote.min_delta
    assert params["gpu"] is False
    assert params["overrides"] == []


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("epochs", 200, 0), ("epochs", 1, 201), ("epochs", 3, "three"),
    ("lr", 0.5, 0), ("lr", 1e-5, 1),
    ("batch_size", 1024, 0), ("batch_size", 8, 2048),
    ("arch", "mobilenet_v2", "vgg16"),
    ("data_source", "dir:/data/photos", "ftp://x"),
    ("promote_metric", "roc_auc", "loss"),
    ("promote_min_delta", 0.05, -0.1),
    ("gpu", True, "yes"),
    ("overrides", ["train.seed=1"], ["not an override"]),
    ("overrides", ["deploy.max_p99_s=10"], ["deploy.=10"]),
])
def test_form_refuses_invalid_values(parse_dag, name: str, good, bad) -> None:
    param = parse_dag("local").params.get_param(name)
    assert param.resolve(good) == good
    with pytest.raises(ParamValidationError):
        param.resolve(bad)


def test_every_parameter_of_params_yaml_can_be_overridden_from_the_form() -> None:
    """The form's override pattern takes every section.key of params.yaml (a key with a digit,
    deploy.max_p99_s, was refused with HTTP 400 when a run was triggered)."""
    import re

    import yaml

    from catsdogs.orchestration.runners.common import OVERRIDE_PATTERN
    from tests.conftest import REPO_ROOT

    sections = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    keys = [f"{section}.{key}" for section, values in sections.items() for key in values]
    assert len(keys) > 50
    assert [key for key in keys if not re.match(OVERRIDE_PATTERN, f"{key}=1")] == []


def test_an_unknown_runner_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("CATSDOGS_RUNNER", "celery")
    with pytest.raises(ValueError, match="CATSDOGS_RUNNER='celery'.*'docker', 'local' or 'kubernetes'"):
        runner()


def test_params_reach_the_stage_as_valid_overrides(parse_dag) -> None:
    dag = parse_dag("local")
    params = {**dag.params.dump(), "epochs": 3, "lr": 0.001, "data_source": "dir:/tmp/my photos",
              "overrides": ["transform.image_size=128"]}
    overrides = overrides_from_params(params)
    loaded = load_params("params.yaml", overrides)
    assert (loaded.train.epochs, loaded.train.lr) == (3, 0.001)
    assert loaded.data.source == "dir:/tmp/my photos"
    assert loaded.transform.image_size == 128
    template = dag.get_template_env()
    command = template.from_string(dag.get_task("train").bash_command).render(params=params)
    assert command.startswith("catsdogs train --set ")
    assert "'data.source=\"dir:/tmp/my photos\"'" in command  # shell-quoted, YAML-quoted


def test_docker_mode_operators(parse_dag) -> None:
    dag = parse_dag("docker", CATSDOGS_WORKER_IMAGE="registry.local/catsdogs-worker:1.2",
                    MLFLOW_TRACKING_URI="http://mlflow:5000", KAGGLE_KEY=SECRET,
                    KAGGLE_USERNAME="someone", CATSDOGS_DOCKER_GID="998",
                    CATSDOGS_DEPLOY_TARGET="compose", CATSDOGS_COMPOSE_PROJECT="cd",
                    CATSDOGS_SERVICE_ENV_CATSDOGS_PREDICTION_LOG_URL=f"postgresql://u:{SECRET}@db/x",
                    CATSDOGS_LOG_FORMAT="json")
    for task in dag.tasks:
        assert task.image == "registry.local/catsdogs-worker:1.2"
        mount, pictures, *engine = task.mounts
        assert (mount["Type"], mount["Source"], mount["Target"]) == ("volume", "catsdogs-data",
                                                                     "/data")
        # the pictures the service keeps, for ingest and review: read-only
        assert (pictures["Source"], pictures["Target"], pictures["ReadOnly"]) == (
            "catsdogs-pictures", "/pictures", True)
        # only the rollout gets the Docker engine (and the deployment settings)
        if task.task_id == "deploy":
            assert [(m["Type"], m["Source"], m["Target"]) for m in engine] == [
                ("bind", "/var/run/docker.sock", "/var/run/docker.sock")]
            assert task.user == "50000:998"
            assert task.environment["CATSDOGS_DEPLOY_TARGET"] == "compose"
            assert task.environment["CATSDOGS_COMPOSE_PROJECT"] == "cd"
            # the Bento containers' settings (a password here) only privately
            assert task._private_environment[
                "CATSDOGS_SERVICE_ENV_CATSDOGS_PREDICTION_LOG_URL"].endswith("@db/x")
            assert not any(SECRET in str(value) for value in task.environment.values())
        else:
            assert engine == [] and task.user is None
            assert "CATSDOGS_DEPLOY_TARGET" not in task.environment
        assert task.mount_tmp_dir is False
        assert task.auto_remove == "success"
        assert task.shm_size >= 1024**3
        assert task.network_mode == "catsdogs"
        assert task.environment["CATSDOGS_DATA_DIR"] == "/data"
        assert task.environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert task.environment["CATSDOGS_LOG_FORMAT"] == "json"  # Airflow's, handed on
        assert not any("KAGGLE" in key or SECRET in str(value)
                       for key, value in task.environment.items())
        assert task.command.startswith(f"catsdogs {task.task_id}")
        assert "environment" in task.template_fields
        assert "private_environment" not in task.template_fields


def test_gpus_only_for_train_and_promote_when_switched_on(parse_dag) -> None:
    dag = parse_dag("docker")
    for task in dag.tasks:
        assert task.device_requests_for({"gpu": False}) is None
        requests = task.device_requests_for({"gpu": True})
        if task.task_id in ("train", "promote"):
            [request] = requests
            assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
        else:
            assert requests is None


def test_kaggle_credentials_from_the_environment_only_for_ingest(parse_dag, monkeypatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert kaggle_credentials() == {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": SECRET}
    dag = parse_dag("docker")
    assert [t.task_id for t in dag.tasks if t.needs_kaggle] == ["ingest"]
    monkeypatch.delenv("KAGGLE_KEY")
    assert kaggle_credentials() == {}


def test_assets_announced(parse_dag) -> None:
    dag = parse_dag("local")
    uris = {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks}
    assert uris["transform"] == ["catsdogs://data/transformed"]
    assert uris["train"] == ["mlflow://models/CatsDogsCNN"]


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_train_has_the_mlflow_run_link(parse_dag, monkeypatch, runner: str) -> None:
    dag = parse_dag(runner)
    assert [link.name for link in dag.get_task("train").operator_extra_links] == ["MLflow run"]
    assert [link.name for link in dag.get_task("promote").operator_extra_links] == ["MLflow run"]
    assert not dag.get_task("transform").operator_extra_links
    # The serialised DAG (what the api-server and the UI read) carries the button too.
    from airflow.serialization.serialized_objects import DagSerialization

    tasks = [t.get("__var", t) for t in DagSerialization.to_dict(dag)["dag"]["tasks"]]
    links = {t["task_id"]: t.get("_operator_extra_links") for t in tasks}
    assert links["train"] == {"MLflow run": "_link_MlflowRunLink"}
    assert links["ingest"] is None
    # The URL comes from the stage's JSON summary (the `run_id` it names), never from a log line.
    run_id = "0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("CATSDOGS_MLFLOW_UI_URL", "http://localhost:5000/")
    train = dag.get_task("train")
    train.stage_summary = {"stage": "train", "run_id": run_id, "experiment_id": "4"}
    assert MlflowRunLink().get_link(train, ti_key=None) == \
        f"http://localhost:5000/#/experiments/4/runs/{run_id}?workflowType=machine_learning"
    train.stage_summary = None
    assert MlflowRunLink().get_link(train, ti_key=None) == ""


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_rollback_dag_takes_the_version_from_its_trigger_form(parse_dag, runner: str) -> None:
    from catsdogs.orchestration.runners.common import command_template
    from catsdogs.orchestration.stage_table import ROLLBACK_DAG_ID, ROLLBACK_STAGE

    dag = parse_dag(runner, dag_id=ROLLBACK_DAG_ID)
    assert dag.dag_id == ROLLBACK_DAG_ID and type(dag.timetable).__name__ == "NullTimetable"
    assert dag.task_ids == ["rollback"]
    assert dag.params["rollback_to"] == ""
    dag.params.validate()
    task = dag.get_task("rollback")
    assert ROLLBACK_STAGE.command()[1] == "rollback"
    source = task.bash_command if runner == "local" else command_template(ROLLBACK_STAGE)
    template = dag.get_template_env().from_string(source)
    assert template.render(params={"rollback_to": "7"}).startswith("catsdogs rollback --to 7")
    assert template.render(params={"rollback_to": ""}).strip() == "catsdogs rollback"
    with pytest.raises(ParamValidationError):
        dag.params["rollback_to"] = "7; rm -rf /"
        dag.params.validate()


def test_rollout_stages_get_the_deploy_settings_and_nothing_else(monkeypatch) -> None:
    """What deploy/rollback containers and pods get from the Airflow environment: the target's
    settings (a renamed variable under its new name), the compose network and volume; never the
    service's private settings, the Airflow environment's MLflow URI or unrelated settings."""
    for name, value in {"CATSDOGS_DEPLOY_TARGET": "compose", "CATSDOGS_COMPOSE_PROJECT": "cd",
                        "CATSDOGS_MODEL_IMAGE": "reg/cd:v{version}",
                        "CATSDOGS_KUBE_ENDPOINT": "http://svc:3000",
                        "CATSDOGS_DOCKER_NETWORK": "net", "CATSDOGS_DATA_VOLUME": "vol",
                        "CATSDOGS_PICTURES_VOLUME": "pics",
                        "CATSDOGS_SERVICE_ENV_CATSDOGS_PREDICTION_LOG_URL": "postgresql://u:p@db/m",
                        "MLFLOW_TRACKING_URI": "http://localhost:5000",
                        "CATSDOGS_WORKER_IMAGE": "w:1", "CATSDOGS_DOCKER_GID": "999"}.items():
        monkeypatch.setenv(name, value)
    assert deploy_environment() == {
        "CATSDOGS_DEPLOY_TARGET": "compose", "CATSDOGS_COMPOSE_PROJECT": "cd",
        "CATSDOGS_MODEL_IMAGE": "reg/cd:v{version}", "CATSDOGS_K8S_RELEASE_ENDPOINT": "http://svc:3000",
        "CATSDOGS_DOCKER_NETWORK": "net", "CATSDOGS_DATA_VOLUME": "vol",
        "CATSDOGS_PICTURES_VOLUME": "pics"}


def test_docker_stages_get_the_mlflow_login_only_privately(parse_dag, monkeypatch) -> None:
    """Every stage container gets the MLflow service account as MLflow's client reads it, in the
    operator's private environment (not a template field: never rendered, stored in the
    serialised DAG or logged), and the password is masked in the task logs."""
    import types

    from airflow.providers.docker.operators.docker import DockerOperator

    password = "s3cr3t-mlflow-service-password"
    dag = parse_dag("docker", MLFLOW_TRACKING_USERNAME="catsdogs-pipeline",
                    MLFLOW_TRACKING_PASSWORD=password)
    started: dict[str, tuple[dict, dict]] = {}

    def start_container(self, context):  # what DockerOperator.execute would hand the engine
        started[self.task_id] = (dict(self.environment), dict(self._private_environment))
        return {"status": "ok"}

    masked: list[str] = []
    monkeypatch.setattr(DockerOperator, "execute", start_container)
    monkeypatch.setattr(StageDockerOperator, "remove_stale_containers", lambda self, labels: [])
    monkeypatch.setattr("airflow.sdk.log.mask_secret", masked.append)
    run_id = "manual__2026-12-07T04:00:00+00:00"
    for task in dag.tasks:
        ti = types.SimpleNamespace(dag_id=dag.dag_id, run_id=run_id, task_id=task.task_id,
                                   try_number=1)
        task.execute({"ti": ti, "dag": dag, "run_id": run_id, "params": {"gpu": False}})
        environment, private = started[task.task_id]
        assert private["MLFLOW_TRACKING_USERNAME"] == "catsdogs-pipeline", task.task_id
        assert private["MLFLOW_TRACKING_PASSWORD"] == password, task.task_id
        assert not any(password in str(value) for value in environment.values())
        assert "MLFLOW_TRACKING_PASSWORD" not in environment
    assert password in masked
    assert not any(password in str(getattr(task, field, "")) for task in dag.tasks
                   for field in task.template_fields)



@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_batch_scoring_dag_takes_pictures_and_model_from_its_trigger_form(
        parse_dag, monkeypatch, runner: str) -> None:
    from catsdogs.orchestration.runners.common import command_template
    from catsdogs.orchestration.stage_table import SCORE_STAGE, SCORING_DAG_ID

    dag = parse_dag(runner, dag_id=SCORING_DAG_ID)
    assert type(dag.timetable).__name__ == "NullTimetable" and dag.task_ids == ["score"]
    task = dag.get_task("score")
    assert task.queue == DEFAULT_QUEUE and task.retries >= 1
    assert task.execution_timeout.total_seconds() == SCORE_STAGE.timeout_minutes * 60
    assert dag.params["model"] == "models:/CatsDogsCNN@champion"
    with pytest.raises(ParamValidationError):      # the pictures are required
        dag.params.validate()
    dag.params["images"] = "archive:/data/inbox/shelter photos.zip"
    dag.params.validate()
    for bad in ("", " leading-space", "models:/x@champion; rm -rf /"):
        with pytest.raises(ParamValidationError):
            dag.params["model" if bad.startswith("models") else "images"] = bad
            dag.params.validate()
    source = task.bash_command if runner == "local" else command_template(SCORE_STAGE)
    rendered = dag.get_template_env().from_string(source).render(
        params={"images": "archive:/data/inbox/shelter photos.zip", "model": "7"})
    assert rendered.strip() == ("catsdogs score --images 'archive:/data/inbox/shelter photos.zip'"
                                " --model 7")
    # The summary is the XCom (StageMixin) and the button opens the scoring run's report.
    assert [link.name for link in task.operator_extra_links] == ["MLflow run"]
    monkeypatch.setenv("CATSDOGS_MLFLOW_UI_URL", "http://localhost:5000")
    task.stage_summary = {"stage": "score", "run_id": "ab" * 16, "experiment_id": "9"}
    assert MlflowRunLink().get_link(task, ti_key=None).startswith(
        f"http://localhost:5000/#/experiments/9/runs/{'ab' * 16}")
