"""The platform in docker compose, end to end on a real Docker engine.

Builds the images (local Debian-based stand-ins for the base images when Docker Hub is
unreachable), starts Postgres, Redis, Airflow (api-server, scheduler, dag-processor, triggerer and
two Celery workers: `default` and `gpu` queues), MLflow, Prometheus, Alertmanager, the Pushgateway
and the service's HAProxy proxy, triggers `catsdogs_training` through Airflow's REST API for a short
CPU run on a few hundred real photos, stops the GPU worker while it runs `train` and starts it
again, checks that the run still finishes (the lost try retried, its stage container removed, no
half-written output), that the data stages ran on the CPU worker and train/promote on the GPU
worker, that every stage ran as its own DockerOperator container on the shared volume, that
MLflow's registry has `CatsDogsCNN@champion` and that the run's deploy task rolled it out behind
compose's HAProxy (`bento-proxy`, blue/green pair). A second run (more epochs) is rolled out while a
load generator calls the proxy the whole time: every answer 2xx, the served `model.version`
changing from the old to the new version; its image is one model layer on the runtime image
(build time and bytes added measured). A post-deploy check that fails and moves @champion back is
tested with real slots and HAProxy on this machine (tests/deployment/test_local_rollout.py) and
through compose's HAProxy runtime API (tests/deployment/test_proxy.py), not with a third
pipeline run here. Then Prometheus must have scraped the service, and drifted traffic
makes the monitoring DAG emit its drift Asset event, which asks for labels and starts no training
run (too few labels), and the drift alert fires in Alertmanager. Tears everything down afterwards (CATSDOGS_E2E_KEEP=1 keeps the images for
a faster re-run). Phase timings, the switch's figures, worker placement, image sizes and memory
at rest go to test-artifacts/e2e-compose.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from catsdogs.orchestration.airflow_client import AirflowClient, AirflowError
from catsdogs.orchestration.stage_table import PIPELINE, TRAINING_DAG_ID
from demo.compose_env import generate_secrets
from tests.deployment.load import Load
from tests.e2e.compose import (
    COMPOSE_FILE,
    REPO_ROOT,
    compose_command,
    dashboard_exprs,
    http_json,
    wait_until,
)
from tests.e2e.drift_step import drift_asks_for_labels_and_alerts
from tests.servers import free_port, open_local

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

# Several checkouts on one engine (parallel worktrees) each set their own project and image tag.
PROJECT = os.environ.get("CATSDOGS_E2E_PROJECT", "catsdogs-e2e")
TAG = os.environ.get("CATSDOGS_E2E_TAG", "e2e")
PER_CLASS = int(os.environ.get("CATSDOGS_E2E_PER_CLASS", "150"))
STAGES = ("ingest", "validate", "prepare", "transform", "train", "promote", "deploy")
CORE_SERVICES = ("postgres", "redis", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer", "airflow-worker-cpu",
                 "airflow-worker-gpu", "mlflow", "prometheus", "alertmanager",
                 "pushgateway", "bento-proxy")
# The Celery worker (service and hostname) that consumes each queue of the stage table.
WORKER_OF_QUEUE = {"default": "airflow-worker-cpu", "gpu": "airflow-worker-gpu"}
INTERRUPTED = os.environ.get("CATSDOGS_E2E_INTERRUPT", "train")  # the stage whose worker stops
KEEP = os.environ.get("CATSDOGS_E2E_KEEP") == "1"


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None,
        check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion shows its output's tail."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                         env=env, **kwargs)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:6])} ... exited {out.returncode}:\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def image_ids() -> set[str]:
    """This run's images: those tagged TAG (another checkout's builds on the engine are kept)."""
    out = run(["docker", "images", "--no-trunc", "--format", "{{.Tag}} {{.ID}}"], 60).stdout
    return {line.split()[1] for line in out.splitlines() if line.split()[0] == TAG}


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    figures: dict = field(default_factory=dict)

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def compose_run(self, *args: str, timeout: float = 900, check: bool = True, **kwargs):
        return run([*self.compose, *args], timeout, env=self.env, check=check, **kwargs)

    def phase(self, name: str, started: float) -> None:
        self.figures.setdefault("phases_s", {})[name] = round(time.monotonic() - started, 1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, artifacts_dir: Path) -> Iterator[Stack]:
    t0 = time.monotonic()
    figures: dict = {}
    run(["bash", "scripts/docker-engine.sh"], 600)
    compose = compose_command()
    assert compose, "docker compose is missing after scripts/docker-engine.sh"
    figures.setdefault("phases_s", {})["engine"] = round(time.monotonic() - t0, 1)
    before = image_ids()

    t = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "CATSDOGS_"))}
    env.update(CATSDOGS_IMAGE_TAG=TAG, DOCKER_BUILDKIT="0")
    built = run(["bash", "scripts/docker-images.sh"], 2400, env=env)
    images = dict(line.split("=", 1) for line in built.stdout.split() if "=" in line)
    figures["phases_s"]["images"] = round(time.monotonic() - t, 1)
    figures["images_built_log"] = built.stderr.strip().splitlines()[-8:]

    ports = {name: free_port() for name in ("airflow", "mlflow", "bento", "prometheus", "grafana",
                                            "alertmanager", "pushgateway")}
    settings = {
        **images,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "CATSDOGS_DATA_VOLUME": f"{PROJECT}-data", "CATSDOGS_PICTURES_VOLUME": f"{PROJECT}-pictures",
        "CATSDOGS_DOCKER_NETWORK": PROJECT,
        # each version's image (one model layer on the runtime image); tagged TAG for tear-down
        "CATSDOGS_MODEL_IMAGE": f"catsdogs-service-v{{version}}:{TAG}",
        "AIRFLOW_PORT": str(ports["airflow"]), "MLFLOW_PORT": str(ports["mlflow"]),
        "BENTO_PORT": str(ports["bento"]), "PROMETHEUS_PORT": str(ports["prometheus"]),
        "GRAFANA_PORT": str(ports["grafana"]),
        "ALERTMANAGER_PORT": str(ports["alertmanager"]),
        "PUSHGATEWAY_PORT": str(ports["pushgateway"]),
        "AIRFLOW_BASE_URL": f"http://localhost:{ports['airflow']}",
        "CATSDOGS_MLFLOW_UI_URL": f"http://localhost:{ports['mlflow']}",
        "MLFLOW_READER_USER": "reader",
        # every secret compose requires, made as `make up` makes them (demo.compose_env)
        **generate_secrets(),
        # One retry, soon: the try lost with its stopped worker fails after the heartbeat timeout.
        "CATSDOGS_TASK_RETRIES": "1", "CATSDOGS_RETRY_DELAY_S": "5",
        "AIRFLOW_TASK_HEARTBEAT_TIMEOUT_S": "30",
        # No drift cool-down: the hourly monitoring run may fall inside the test (the rollout load
        # repeats one photo, which reads as drift) and its event must not silence the drift step's.
        "CATSDOGS_DRIFT_COOLDOWN_HOURS": "0",
        "CATSDOGS_GPU": "false", "AIRFLOW_PARALLELISM": "2",
        "CATSDOGS_SHM_BYTES": str(512 * 1024**2),
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
    }
    env_file = tmp_path_factory.mktemp("compose") / "e2e.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    base = [*compose, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "-p", PROJECT]
    s = Stack(base, {**env, **settings}, ports, figures)
    try:
        s.compose_run("down", "-v", "--remove-orphans", timeout=300)
        t = time.monotonic()
        s.compose_run("up", "-d", "--wait", "--wait-timeout", "900", *CORE_SERVICES, timeout=1200)
        s.phase("compose_up_healthy", t)
        yield s
    finally:
        logs = s.compose_run("logs", "--no-color", "--tail", "300",
                             timeout=120, check=False)
        (artifacts_dir / "e2e-compose.log").write_text(logs.stdout + logs.stderr)
        leftovers = run(["docker", "ps", "-aq", "--filter",
                         f"ancestor={images.get('CATSDOGS_WORKER_IMAGE', 'x')}"], 60,
                        check=False).stdout.split()
        # and the Bento pair the deploy task started (labelled into the project)
        leftovers += run(["docker", "ps", "-aq", "--filter",
                          f"label=com.docker.compose.project={PROJECT}", "--filter",
                          "label=org.catsdogs.model.version"], 60, check=False).stdout.split()
        if leftovers:
            run(["docker", "rm", "-f", *leftovers], 120, check=False)
        s.compose_run("down", "-v", "--remove-orphans", timeout=300, check=False)
        figures["phases_s"]["total"] = round(time.monotonic() - t0, 1)
        (artifacts_dir / "e2e-compose.json").write_text(json.dumps(figures, indent=2))
        if not KEEP:
            for _ in range(4):  # children first: a parent with child images is refused
                new = sorted(image_ids() - before)
                if not new:
                    break
                run(["docker", "rmi", "-f", *new], 600, check=False)
            run(["docker", "image", "prune", "-f"], 300, check=False)


def airflow_client(stack: Stack) -> AirflowClient:
    """The project's REST API v2 client, logged in as the stack's admin."""
    return AirflowClient(stack.url("airflow"), "admin", stack.env["AIRFLOW_ADMIN_PASSWORD"])


def seed_photos(stack: Stack, sample_dir: Path, tmp: Path) -> str:
    """Copy a few hundred real photos into the shared volume; the `dir:` source the run reads."""
    subset = tmp / "photos"
    for label in ("cat", "dog"):
        (subset / label).mkdir(parents=True)
        for photo in sorted((sample_dir / label).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy2(photo, subset / label / photo.name)
    worker = stack.env["CATSDOGS_WORKER_IMAGE"]
    run(["docker", "run", "--rm", "--network", "none",
         "-v", f"{stack.env['CATSDOGS_DATA_VOLUME']}:/data", "-v", f"{subset}:/photos:ro",
         worker, "sh", "-c", "mkdir -p /data/incoming && cp -r /photos/. /data/incoming/"], 300)
    return "dir:/data/incoming"


PHASES = ("deploy.shadow_s=20", "deploy.shadow_requests=50", "deploy.canary_percent=50",
          "deploy.canary_s=15", "deploy.watch_s=10", "deploy.min_agreement=0",
          "deploy.max_confidence_drop=1", "deploy.max_ood_ratio_gap=1", "deploy.max_p99_s=10")


def trigger_training(client: AirflowClient, source: str, epochs: int = 1,
                     extra: tuple[str, ...] = ()) -> str:
    client.wait_for_dag(TRAINING_DAG_ID, timeout=300)
    client.unpause(TRAINING_DAG_ID)
    # A quarter of the photos for the test split: the post-deploy check sends 50 of them. The
    # tolerance is wide: a near-random model scored on 50 of its ~75 test pictures.
    conf = {"epochs": epochs, "batch_size": 32, "arch": "mobilenet_v2", "data_source": source,
            "gpu": False,
            "overrides": ["model.weights=none", "transform.image_size=96",
                          "train.num_workers=0", "train.precision=fp32",
                          "split.train=0.65", "split.val=0.1", "split.test=0.25",
                          "deploy.check_images=50", "deploy.accuracy_tolerance=0.2",
                          "deploy.drain_s=3", "deploy.ready_timeout_s=600",
                          # the live-traffic phases, short; their quality gates open (models
                          # near chance disagree and are unsure), the mechanics and the
                          # error-ratio gate real: the mirror, a 50 % canary, the watch
                          *PHASES, *extra]}
    return client.trigger(TRAINING_DAG_ID, conf, run_id=f"e2e-{uuid.uuid4().hex[:8]}")


def task_failure_report(client: AirflowClient, run_id: str, instances: list[dict]) -> str:
    lines = [f"{ti['task_id']}: {ti['state']}" for ti in instances]
    for ti in instances:
        if ti["state"] not in ("success", None):
            try:
                text = client.task_log(TRAINING_DAG_ID, run_id, ti["task_id"],
                                       max(ti["try_number"], 1))
            except AirflowError as exc:
                text = str(exc)
            lines.append(f"--- {ti['task_id']} log ---\n{text[-4000:]}")
    return "\n".join(lines)


def stage_containers(run_id: str, task_id: str | None = None, running: bool = False) -> list[str]:
    """Ids of the stage containers of this DAG run (labelled by StageDockerOperator)."""
    argv = ["docker", "ps", "-q", "--filter", f"label=io.catsdogs.run_id={run_id}"]
    if not running:
        argv.insert(2, "-a")
    if task_id:
        argv += ["--filter", f"label=io.catsdogs.task_id={task_id}"]
    return run(argv, 60).stdout.split()


def interrupt_worker(stack: Stack, client: AirflowClient, run_id: str, task_id: str) -> dict:
    """Stop the Celery worker of `task_id`'s queue while its stage container runs (SIGTERM, then
    SIGKILL after 3 s: the try is lost mid-stage), then start it again. Returns what was stopped
    and when (`stopped_epoch`: wall-clock seconds, comparable with the task instances' dates)."""
    queue = next(stage.queue for stage in PIPELINE if stage.name == task_id)
    worker = WORKER_OF_QUEUE[queue]

    def stage_running() -> str:
        state = client.task_instances(TRAINING_DAG_ID, run_id).get(task_id, {}).get("state")
        if state in ("success", "failed", "upstream_failed"):
            return state  # too late (or the run failed): reported below
        return "running" if state == "running" and stage_containers(run_id, task_id, True) else ""

    seen = wait_until(stage_running, 1200, interval=1, what=f"{task_id}'s stage container running")
    assert seen == "running", f"{task_id} ended ({seen}) before its worker could be stopped"
    time.sleep(3)  # well inside the stage, past the container's start-up
    stopped_at = time.time()
    stack.compose_run("stop", "--timeout", "3", worker, timeout=120)
    orphans = stage_containers(run_id, task_id, running=True)
    stack.compose_run("start", worker, timeout=120)
    return {"task": task_id, "queue": queue, "worker": worker,
            "stopped_epoch": round(stopped_at, 1),
            "stop_and_start_s": round(time.time() - stopped_at, 1),
            "stage_containers_running_after_stop": len(orphans)}


def iso_seconds(value: str) -> float:
    """Seconds since the epoch of an ISO 8601 time from the REST API."""
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait_for_run(client: AirflowClient, run_id: str, expect: str = "success") -> list[dict]:
    timeout = float(os.environ.get("CATSDOGS_E2E_RUN_TIMEOUT_S", "1500"))
    state = client.follow(TRAINING_DAG_ID, run_id, timeout=timeout, poll_s=5)
    instances = list(client.task_instances(TRAINING_DAG_ID, run_id).values())
    assert state == expect, (f"DAG run {run_id} ended {state}:\n"
                             + task_failure_report(client, run_id, instances))
    return instances


def reader(stack: Stack) -> tuple[str, str]:
    """MLflow's read-only account (docker/mlflow/users.py made it)."""
    return stack.env["MLFLOW_READER_USER"], stack.env["MLFLOW_READER_PASSWORD"]


def mlflow_champion(stack: Stack) -> tuple[dict, dict]:
    api = stack.url("mlflow", "/api/2.0/mlflow")
    query = urllib.parse.urlencode({"name": "CatsDogsCNN", "alias": "champion"})
    version = http_json(f"{api}/registered-models/alias?{query}",
                        login=reader(stack))["model_version"]
    mlflow_run = http_json(f"{api}/runs/get?run_id={version['run_id']}",
                           login=reader(stack))["run"]
    return version, mlflow_run


def predict(stack: Stack, photo: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{photo.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    body += photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(stack.url("bento", "/predict"), data=body, method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with open_local(request, timeout=60) as response:
        return json.loads(response.read())


def memory_at_rest(stack: Stack) -> dict[str, str]:
    out = run(["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}"], 120)
    return dict(line.split("\t", 1) for line in out.stdout.strip().splitlines()
                if line.startswith(PROJECT))


def test_platform_trains_registers_and_serves_end_to_end(stack: Stack, sample_dir: Path,
                                                         tmp_path: Path) -> None:
    figures = stack.figures
    figures["memory_at_rest_core"] = memory_at_rest(stack)

    # 1. Airflow: trigger a short CPU run on real photos, every stage as a DockerOperator container.
    t = time.monotonic()
    source = seed_photos(stack, sample_dir, tmp_path)
    client = airflow_client(stack)
    run_id = trigger_training(client, source)
    # Celery: stop the worker running INTERRUPTED mid-stage, start it again; the run must finish.
    interruption = interrupt_worker(stack, client, run_id, INTERRUPTED)
    instances = wait_for_run(client, run_id)
    stack.phase("dag_run", t)
    by_task = {ti["task_id"]: ti for ti in instances}
    assert set(by_task) == set(STAGES)
    for stage in STAGES:
        assert by_task[stage]["state"] == "success", stage
        assert by_task[stage]["operator"] == "StageDockerOperator", by_task[stage]["operator"]
    # Placement: each task on its queue, consumed by that queue's worker (fixed hostnames).
    placement = {ti["task_id"]: {"hostname": ti["hostname"], "queue": ti["queue"]}
                 for ti in instances}
    figures["placement"] = placement
    for stage in PIPELINE:
        assert placement[stage.name] == {"hostname": WORKER_OF_QUEUE[stage.queue],
                                         "queue": stage.queue}, (stage.name, placement)
    assert {placement[s]["hostname"] for s in ("ingest", "validate", "prepare", "transform")} \
        == {"airflow-worker-cpu"}
    assert {placement[s]["hostname"] for s in ("train", "promote")} == {"airflow-worker-gpu"}
    # Redelivery: the lost try failed on its heartbeat, the retry ran on the restarted worker;
    # the other tasks ran once; no stage container of the run is left (the killed try's removed).
    tries = client.task_tries(TRAINING_DAG_ID, run_id, INTERRUPTED)
    assert [t["try_number"] for t in tries] == [1, 2], tries
    assert tries[0]["state"] != "success" and tries[1]["state"] == "success", tries
    assert all(by_task[s]["try_number"] == 1 for s in STAGES if s != INTERRUPTED), by_task
    assert stage_containers(run_id) == [], "stage containers left behind"
    # Who failed the lost try: the scheduler's heartbeat check (Celery does not redeliver the
    # unacknowledged message before the broker's visibility timeout), and the retry removed the
    # lost try's container, still running on the engine after the worker stopped.
    timeouts = client.event_logs(TRAINING_DAG_ID, run_id, INTERRUPTED, "heartbeat timeout")
    assert timeouts, "the lost try was not failed by the heartbeat check"
    retry_log = client.task_log(TRAINING_DAG_ID, run_id, INTERRUPTED, 2)
    assert "left by try 1 of this task" in retry_log, retry_log[-3000:]
    lost_s = iso_seconds(tries[1]["start_date"]) - iso_seconds(tries[0]["start_date"])
    figures["redelivery"] = {
        **interruption,
        "tries": [{k: t.get(k) for k in ("try_number", "state", "hostname", "start_date",
                                         "end_date")} for t in tries],
        "retry_started_after_stop_s": round(iso_seconds(tries[1]["start_date"])
                                            - interruption["stopped_epoch"], 1),
        "time_lost_s": round(lost_s, 1),
        "failed_by": f"scheduler heartbeat check at {timeouts[0]['when']}",
        "stale_container_removed_by_retry": True,
        "heartbeat_timeout_s": int(stack.env["AIRFLOW_TASK_HEARTBEAT_TIMEOUT_S"]),
        "stage_containers_left": 0}
    listing = run(["docker", "run", "--rm", "--network", "none", "-v",
                   f"{stack.env['CATSDOGS_DATA_VOLUME']}:/data",
                   stack.env["CATSDOGS_WORKER_IMAGE"], "sh", "-c",
                   "ls /data; find /data -name '.*.tmp-*' | wc -l; "
                   "ls /data/transformed/train/cat | wc -l; ls /data/raw/cat | wc -l"],
                  120).stdout.split()
    assert {"raw", "prepared", "transformed", "reports"} <= set(listing), listing
    assert int(listing[-3]) == 0, "half-written stage output (.*.tmp-*) left on the volume"
    train_cats, raw_cats = int(listing[-2]), int(listing[-1])
    assert raw_cats == PER_CLASS and 0 < train_cats < raw_cats

    # 2. MLflow server (REST): the run with its metrics, a version aliased champion.
    version, mlflow_run = mlflow_champion(stack)
    # MLflow behind its login: the same request without one is refused
    with pytest.raises(AssertionError, match="HTTP 401"):
        http_json(stack.url("mlflow", "/api/2.0/mlflow/registered-models/get?name=CatsDogsCNN"))
    assert version["name"] == "CatsDogsCNN" and "champion" in version.get("aliases", [])
    metrics = {m["key"]: m["value"] for m in mlflow_run["data"].get("metrics", [])}
    assert metrics, "the champion's run logged no metrics"
    # Each stage's summary came out of its container into XCom; the button opens the run.
    train = client.xcom(TRAINING_DAG_ID, run_id, "train")
    assert train["stage"] == "train" and train["run_id"] == version["run_id"], train
    assert client.task_links(TRAINING_DAG_ID, run_id, "train")["MLflow run"].endswith(
        f"/runs/{version['run_id']}?workflowType=machine_learning")
    assert client.xcom(TRAINING_DAG_ID, run_id, "promote")["promoted"] is True
    experiment = http_json(stack.url("mlflow", "/api/2.0/mlflow/experiments/get?experiment_id="
                                     + mlflow_run["info"]["experiment_id"]),
                           login=reader(stack))["experiment"]
    assert experiment["name"] == "Cats vs Dogs CNN"
    figures["champion"] = {"version": version["version"], "metrics": metrics}

    # 3. The run's deploy task rolled v1 out behind bento-proxy and checked it live.
    deploy = client.xcom(TRAINING_DAG_ID, run_id, "deploy")
    assert deploy["deployed"] is True and deploy["version"] == version["version"], deploy
    assert deploy["check"]["sent"] == 50 and deploy["check"]["failures"] == 0, deploy
    assert deploy["color"] == "blue" and deploy["previous_color"] is None
    photo = sorted((sample_dir / "dog").glob("*.jpg"))[-1]   # not among the training photos
    answer = predict(stack, photo)
    assert answer.get("label") in ("cat", "dog"), answer
    assert answer["model"]["version"] == version["version"], answer
    figures["prediction"] = answer
    # the per-version image carries the OpenVINO runtime: its import built and measured the
    # OpenVINO variants, and the service runs one the import adopted, with no fallback
    with open_local(stack.url("bento", "/model"), timeout=30) as response:
        runtime = json.loads(response.read())["runtime"]
    measured = {m["variant"]: m for m in runtime["measured"]}
    assert {"torch-fp32", "openvino-fp32", "openvino-int8"} <= set(measured), runtime
    assert measured[runtime["variant"]]["adopted"] and not runtime["fell_back"], runtime
    figures["serving_variant"] = {k: runtime[k] for k in ("variant", "reason", "measured_on")}
    figures["rollout_1"] = {k: deploy.get(k) for k in (
        "image", "image_build_s", "image_bytes_added", "ready_s", "switch_s", "check")}

    # 4. A second run (two more epochs) rolled out under load: no failed request, v1 -> v2.
    #    Promoted whatever its score (min_delta < 0): models trained from scratch for 1 and 3
    #    epochs on ~200 photos are too close to chance to rely on the second being better; the
    #    figures record both scores.
    old = version["version"]
    t = time.monotonic()
    with Load(stack.url("bento"), photo, threads=1, pause_s=0.2) as load:
        run_2 = trigger_training(client, source, epochs=3, extra=("promote.min_delta=-1",))
        instances = wait_for_run(client, run_2)
    stack.phase("dag_run_2_under_load", t)
    promote = client.xcom(TRAINING_DAG_ID, run_2, "promote")
    assert promote["promoted"] is True, promote
    deploy = client.xcom(TRAINING_DAG_ID, run_2, "deploy")
    new = deploy["version"]
    assert deploy["deployed"] is True and new != old and deploy["color"] == "green", deploy
    assert [p["phase"] for p in deploy["phases"]] == ["shadow", "canary", "watch"], deploy
    assert all(p["decision"] != "failed" for p in deploy["phases"]), deploy["phases"]
    assert load.failures == [], load.failures[:5]
    assert load.versions[0] == old and load.versions[-1] == new, load.versions
    assert not deploy["image_reused"] and deploy["image_bytes_added"] < 200 * 1024**2, deploy
    promote_end = next(ti for ti in instances if ti["task_id"] == "promote")["end_date"]
    served_new = next(when for when, v in load.changes if v == new)
    figures["rollout_2"] = {
        "requests": load.sent, "failures": len(load.failures), "versions": load.versions,
        "promote_to_new_version_serving_s": round(served_new - iso_seconds(promote_end), 1),
        "challenger_score": promote.get("challenger_score"),
        "champion_score_before": promote.get("champion_score"),
        **{k: deploy.get(k) for k in ("image", "image_build_s", "image_bytes_added", "ready_s",
                                      "switch_s", "check", "phases")}}
    # the blue container was drained and removed; green serves
    running = run(["docker", "ps", "--format", "{{.Names}}", "--filter",
                   f"label=com.docker.compose.project={PROJECT}"], 60).stdout.split()
    assert f"{PROJECT}-bento-green" in running and f"{PROJECT}-bento-blue" not in running

    # 5. Prometheus scraped the Bento service (and the dashboard's queries parse).
    prom = stack.url("prometheus", "/api/v1")

    def bento_scraped() -> bool:
        targets = http_json(f"{prom}/targets")["data"]["activeTargets"]
        up = [t for t in targets if t["labels"].get("job") == "bento" and t["health"] == "up"]
        query = urllib.parse.quote('bentoml_service_request_total{job="bento"}')
        series = http_json(f"{prom}/query?query={query}")["data"]["result"]
        return bool(up and series)

    wait_until(bento_scraped, 120, interval=3, what="Prometheus scraping the Bento service")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(sorted(dashboard_exprs()))]}]}
    checked = stack.compose_run("exec", "-T", "prometheus", "sh", "-c",
                                "cat > /tmp/dashboard-rules.yml && "
                                "promtool check rules /tmp/dashboard-rules.yml",
                                timeout=120, check=False, input=json.dumps(rules))
    assert checked.returncode == 0, f"dashboard PromQL rejected:\n{checked.stdout}{checked.stderr}"

    # 6. Drift: darkened photos make the monitoring DAG detect drift and announce the drift asset
    #    (no labels: no retraining run), and fire CatsdogsDataDrift in Alertmanager.
    t = time.monotonic()
    held_out = sorted((sample_dir / "cat").glob("*.jpg"))[-40:] + sorted(
        (sample_dir / "dog").glob("*.jpg"))[-40:]
    figures["drift"] = drift_asks_for_labels_and_alerts(
        stack.url("bento", "/predict"), held_out, client, stack.url("prometheus"),
        stack.url("alertmanager"))
    stack.phase("drift_to_alert", t)

    figures["memory_at_rest_all"] = memory_at_rest(stack)
    sizes = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}\t{{.Size}}"], 60)
    figures["image_sizes"] = dict(line.split("\t") for line in sizes.stdout.strip().splitlines()
                                  if line.startswith("catsdogs"))
