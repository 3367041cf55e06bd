"""The local rollout for real: a real MLflow server, real `bentoml serve` slots, a real HAProxy.

One scenario (each `bentoml serve` costs seconds): v1 deployed and checked; the same champion again
is left alone; v2 promoted and switched to while a load generator calls the public endpoint the
whole time; v2's post-deploy check fails (its recorded test accuracy is set above anything the
untrained tiny model reaches), so @champion goes back to v1, v2 is tagged rolled_back with the
reason, v1 serves again, and the stage's error says why. The load generator must see no failed
request through both switches (its clients keep their connections open), and answers from v1,
then v2, then v1 again. Between the first deploy and the second, the idle slot is started beside
the live one: metrics stay per slot, and 60 switches under keep-alive clients lose no request.
A version whose artifact was changed after registration is refused at deploy while the live one
keeps answering."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs.config import load_params
from catsdogs.deployment.check import predict
from catsdogs.deployment.release import wait_ready
from catsdogs.deployment.rollout import deploy_champion
from catsdogs.deployment.targets.local import LocalTarget, _stop_group
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.registry.history import champion_history, move_champion
from catsdogs.registry.names import (
    BY_POST_DEPLOY_CHECK,
    BY_PROMOTE,
    DEPLOY_STATUS_TAG,
    ROLLED_BACK,
)
from tests.deployment.load import Load
from tests.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "CatsDogsDeployTest"
PER_CLASS = 30
SWITCHES = 60

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="haproxy is not installed (scripts/ensure-system-deps.sh)")


def register(mlflow_url: str, test_accuracy: float, image_size: int = 64,
             swapped: bool = False) -> str:
    """A tiny model version registered as training does, with its recorded test accuracy (a
    larger `image_size` is a slower version; `swapped`: its labels swapped)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url,
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])}
    done = subprocess.run([sys.executable, "-m", "tests.serving.register_tiny", mlflow_url, MODEL,
                           str(image_size), *(["--swapped"] if swapped else [])], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    version = done.stdout.strip().splitlines()[-1]
    client = MlflowClient(mlflow_url)
    client.log_metric(client.get_model_version(MODEL, version).run_id, "test_accuracy",
                      test_accuracy)
    return version


@pytest.fixture
def target(tmp_path: Path, sample_dir: Path, mlflow_server: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalTarget, DataPaths]]:
    data = tmp_path / "data"
    for label in ("cat", "dog"):
        folder = data / "transformed" / "test" / label
        folder.mkdir(parents=True)
        for photo in sorted((sample_dir / label).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy2(photo, folder / photo.name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    monkeypatch.setenv("CATSDOGS_SAMPLE_DIR", str(tmp_path / "no-calibration"))
    monkeypatch.setenv("BENTO_PORT", str(free_port()))
    monkeypatch.setenv("CATSDOGS_BENTO_SLOT_PORTS", f"{free_port()},{free_port()}")
    monkeypatch.setenv("CATSDOGS_SERVE_DIR", str(tmp_path / "serving"))
    monkeypatch.setenv("CATSDOGS_MAX_LATENCY_MS", "20000")
    paths = DataPaths.resolve(data)
    local = LocalTarget.from_env(paths, load_params(REPO_ROOT / "params.yaml"))
    yield local, paths
    local.stop()


def test_local_rollout_switches_without_a_failed_request_and_rolls_back(
        target: tuple[LocalTarget, DataPaths], mlflow_server: str, sample_dir: Path,
        artifacts_dir: Path) -> None:
    local, paths = target
    # the plain switch and the check's rollback; the live-traffic phases are test_phases.py's
    params = load_params(REPO_ROOT / "params.yaml", [
        f"mlflow.registered_model_name={MODEL}", "deploy.check_images=50", "deploy.drain_s=2",
        "deploy.shadow_s=0", "deploy.canary_s=0", "deploy.watch_s=0"])
    client = MlflowClient(mlflow_server)
    v1 = register(mlflow_server, test_accuracy=0.0)   # register_tiny makes it @champion

    first = deploy_champion(params, paths, local, client)
    assert first.details["deployed"] is True and local.serving() == v1, first.to_dict()
    assert first.details["check"]["sent"] == 50 and first.details["check"]["failures"] == 0
    assert client.get_model_version(MODEL, v1).tags[DEPLOY_STATUS_TAG] == "deployed"

    again = deploy_champion(params, paths, local, client)
    assert again.skipped and "nothing rebuilt or restarted" in again.message
    _metrics_survive_the_other_slot(local, sorted((sample_dir / "cat").glob("*.jpg"))[-1],
                                    artifacts_dir)

    v2 = register(mlflow_server, test_accuracy=1.0)   # no untrained model reaches 1.0 - 0.05
    client.set_registered_model_alias(MODEL, "champion", v1)
    move_champion(client, MODEL, v2, reason="test: promoted", by=BY_PROMOTE)
    photo = sorted((sample_dir / "dog").glob("*.jpg"))[-1]
    started = time.monotonic()
    with Load(local.endpoint(), photo, keep_alive=True) as load, \
            pytest.raises(UserError) as failed:
        deploy_champion(params, paths, local, client)
    seconds = time.monotonic() - started

    message = str(failed.value)
    assert f"v{v2} failed" in message and "recorded test accuracy" in message, message
    assert f"@champion is v{v1} again" in message
    assert load.failures == [], load.failures[:5]
    # a request in flight on the old slot at a switch is answered by it: answers may alternate there
    assert load.versions[0] == v1 and v2 in load.versions and load.versions[-1] == v1, load.versions
    assert local.serving() == v1
    assert client.get_model_version_by_alias(MODEL, "champion").version == v1
    tags = client.get_model_version(MODEL, v2).tags
    assert tags[DEPLOY_STATUS_TAG] == ROLLED_BACK and "recorded test accuracy" in tags["deploy.reason"]
    last = champion_history(client, MODEL)[-1]
    assert (last.from_version, last.to_version, last.by) == (v2, v1, BY_POST_DEPLOY_CHECK)
    (artifacts_dir / "local-rollout.json").write_text(json.dumps(
        {"requests": load.sent, "failures": len(load.failures), "versions": load.versions,
         "switch_and_rollback_s": round(seconds, 1)}, indent=2))


def _metrics(port: int) -> str:
    """The slot's own /metrics (Prometheus text)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return response.read().decode()


def _predictions(port: int) -> float:
    """The slot's `catsdogs_predictions_total`, summed over labels, read from its own /metrics."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in _metrics(port).splitlines()
               if line.startswith("catsdogs_predictions_total{"))


def _labels(port: int, name: str) -> list[str]:
    """The label sets (`{...}` text) of one metric on the slot's /metrics."""
    return [line.split("}", 1)[0] + "}" for line in _metrics(port).splitlines()
            if line.startswith(name + "{")]


def _metrics_survive_the_other_slot(local: LocalTarget, photo: Path, artifacts_dir: Path) -> None:
    """The live slot's counters neither reset nor mix when the idle slot starts and stops: each
    slot has its own Prometheus multiprocess directory (its own BENTOML_HOME). With both slots
    up, traffic is moved between them SWITCHES times under keep-alive clients: none of their
    requests fails (HAProxy's runtime API closes no connection)."""
    live = local.active()
    assert live is not None
    for _ in range(3):
        predict(local.endpoint(), photo, timeout=60)
    before = _predictions(int(live["port"]))
    assert before >= 3
    slot, port, _ = local._next_slot()
    process = local._start_slot(port, str(live["model_tag"]), slot)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", 300, alive=lambda: process.poll() is None,
                   what=f"a second slot ({slot})")
        assert _predictions(int(live["port"])) >= before, "the starting slot reset the live one"
        assert _predictions(port) == 0, "the idle slot reports the live slot's predictions"
        # each slot labels its metrics with its own slot name (CATSDOGS_SLOT) and model version
        for serving, on_port in ((str(live["slot"]), int(live["port"])), (slot, port)):
            (info,) = _labels(on_port, "catsdogs_model_info")
            assert f'slot="{serving}"' in info and f'version="{live["version"]}"' in info, info
        assert all(f'slot="{live["slot"]}"' in labels
                   for labels in _labels(int(live["port"]), "catsdogs_predictions_total"))
        with Load(local.endpoint(), photo, threads=4, pause_s=0.01, keep_alive=True) as load:
            for i in range(SWITCHES):
                local._route(slot if i % 2 == 0 else str(live["slot"]), str(live["version"]))
                time.sleep(0.2)
        assert load.failures == [], load.failures[:5]
        assert load.sent > SWITCHES, load.sent
        (artifacts_dir / "local-keepalive-switches.json").write_text(json.dumps(
            {"switches": SWITCHES, "clients": 4, "requests": load.sent,
             "failures": len(load.failures)}, indent=2))
    finally:
        local._route(str(live["slot"]), str(live["version"]))
        _stop_group(process.pid)
    assert _predictions(int(live["port"])) >= before, "the stopped slot reset the live one"


def _listening(port: int) -> bool:
    from catsdogs.deployment.targets.local import _listener

    return _listener(port) is not None


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (nothing reaps an orphan under some containers' init)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _catsdogs(*args: str) -> list[str]:
    return [sys.executable, "-m", "catsdogs.cli", *args,
            "--set", f"mlflow.registered_model_name={MODEL}", "--set", "deploy.check_images=50"]


def test_a_killed_deploy_leaves_nothing_the_next_one_cannot_replace(
        target: tuple[LocalTarget, DataPaths], mlflow_server: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """`catsdogs deploy` killed with SIGKILL while its slot starts: the slot it left is recorded
    and ours, so the next deploy replaces it (not "port taken"); a deploy that fails (its slot
    never ready) stops what it started; `stop` leaves no process on any port."""
    local, paths = target
    params = load_params(REPO_ROOT / "params.yaml", [
        f"mlflow.registered_model_name={MODEL}", "deploy.check_images=50", "deploy.drain_s=1"])
    client = MlflowClient(mlflow_server)
    v1 = register(mlflow_server, test_accuracy=0.0)
    env = {**os.environ, "CATSDOGS_DATA_DIR": str(paths.root), "CATSDOGS_DEPLOY_TARGET": "local",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])}
    deploy = subprocess.Popen(_catsdogs("deploy"), cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    slot_record = local.slots_dir / "a.json"
    deadline = time.monotonic() + 600
    while not slot_record.exists():   # the import is done and slot a's process started
        assert deploy.poll() is None, deploy.communicate()[0].decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    deploy.kill()
    deploy.wait()
    leftover = json.loads(slot_record.read_text())["pid"]
    assert local.active() is None
    deadline = time.monotonic() + 120   # the orphan goes on starting and binds its port
    while not _listening(local.slots[0]) and time.monotonic() < deadline:
        time.sleep(0.5)
    holder = local.holder(local.slots[0])
    assert holder is not None and holder.ours, holder

    # a deploy whose slot never gets ready: fails, and stops the slot it started
    impatient = LocalTarget(run_dir=local.run_dir, data_dir=local.data_dir,
                            public_port=local.public_port, slots=local.slots, ready_timeout_s=0.5)
    with pytest.raises(UserError, match="did not answer 200"):
        deploy_champion(params, paths, impatient, client)
    assert _gone(leftover), "the leftover slot was not replaced"
    assert f"replacing a leftover slot a process (pid {leftover}" in caplog.text, caplog.text
    assert not _listening(local.slots[0]) and not list(local.slots_dir.glob("*.json"))
    assert not local._proxy_running()

    done = deploy_champion(params, paths, local, client)
    assert done.details["deployed"] is True and local.serving() == v1, done.to_dict()
    live = local.active()
    assert live is not None and _listening(local.slots[0])

    local.stop()
    assert not any(_listening(port) for port in (*local.slots, local.public_port))
    assert _gone(live["pid"])


def test_preconditions_are_checked_before_any_work(
        target: tuple[LocalTarget, DataPaths], mlflow_server: str, tmp_path: Path) -> None:
    """Missing HAProxy, a foreign process on a slot or public port, or too few test pictures for
    the post-deploy check: a one-line UserError before the import, nothing started."""
    local, paths = target
    client = MlflowClient(mlflow_server)
    register(mlflow_server, test_accuracy=0.0)
    params = load_params(REPO_ROOT / "params.yaml", [
        f"mlflow.registered_model_name={MODEL}", "deploy.check_images=50"])

    def nothing_started() -> None:
        assert not local.slots_dir.exists() and not (local.run_dir / "bento-a.log").exists()
        assert not any(_listening(port) for port in local.slots)

    too_many = load_params(REPO_ROOT / "params.yaml", [
        f"mlflow.registered_model_name={MODEL}", "deploy.check_images=500"])
    with pytest.raises(UserError, match="needs 500 labelled pictures"):
        deploy_champion(too_many, paths, local, client)
    nothing_started()

    no_proxy = LocalTarget(run_dir=local.run_dir, data_dir=local.data_dir,
                           public_port=local.public_port, slots=local.slots,
                           haproxy=str(tmp_path / "no-such-haproxy"))
    with pytest.raises(UserError, match="haproxy is not installed"):
        deploy_champion(params, paths, no_proxy, client)
    nothing_started()

    for port, what in ((local.slots[0], "slot a"), (local.public_port, "the public endpoint")):
        stranger = subprocess.Popen([sys.executable, "-m", "http.server", str(port),
                                     "--bind", "127.0.0.1"], cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not _listening(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            with pytest.raises(UserError) as refused:
                deploy_champion(params, paths, local, client)
            message = str(refused.value)
            assert f"port {port} ({what})" in message and f"pid {stranger.pid}" in message
            assert "http.server" in message, message
            assert stranger.poll() is None, "a foreign process must never be stopped"
        finally:
            stranger.kill()
            stranger.wait()
        if port == local.slots[0]:
            assert not (local.run_dir / "bento-a.log").exists()


def test_a_tampered_artifact_is_refused_at_deploy_while_v1_keeps_answering(
        target: tuple[LocalTarget, DataPaths], mlflow_server: str, sample_dir: Path,
        tmp_path: Path, artifacts_dir: Path) -> None:
    """v1 live; v2 registered, then its weights in the artifact store replaced by another
    network's: `catsdogs deploy` refuses v2 at its import (the sha256 check, naming v2), exits
    non-zero with one line and no traceback, and every request meanwhile gets v1's answer."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from catsdogs.registry.safeload import WEIGHTS_FILE, save_weights
    from catsdogs.training.model import build_model

    local, paths = target
    params = load_params(REPO_ROOT / "params.yaml", [
        f"mlflow.registered_model_name={MODEL}", "deploy.check_images=50"])
    client = MlflowClient(mlflow_server)
    v1 = register(mlflow_server, test_accuracy=0.0)
    assert deploy_champion(params, paths, local, client).details["deployed"] is True
    v2 = register(mlflow_server, test_accuracy=0.0)   # register_tiny makes it @champion
    model_id = client.get_model_version(MODEL, v2).source.removeprefix("models:/")
    store = get_artifact_repository(client.get_logged_model(model_id).artifact_location)
    store.log_artifact(str(save_weights(build_model("resnet18", weights="none"), tmp_path)),
                       "extra_files")
    assert (tmp_path / WEIGHTS_FILE).is_file()
    env = {**os.environ, "CATSDOGS_DATA_DIR": str(paths.root), "CATSDOGS_DEPLOY_TARGET": "local",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])}
    with Load(local.endpoint(), sorted((sample_dir / "dog").glob("*.jpg"))[-1],
              keep_alive=True) as load:
        deploy = subprocess.run(_catsdogs("deploy"), cwd=REPO_ROOT, env=env, capture_output=True,
                                text=True, timeout=900, check=False)
    said = deploy.stdout + deploy.stderr
    assert deploy.returncode != 0, said[-3000:]
    assert f"{MODEL} v{v2} refused: its model artifact's sha256" in said, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert load.sent > 0 and load.failures == [], load.failures[:5]
    assert load.versions == [v1] and local.serving() == v1, load.versions
    (artifacts_dir / "local-tampered-deploy.json").write_text(json.dumps(
        {"requests": load.sent, "failures": len(load.failures), "versions": load.versions,
         "exit_code": deploy.returncode, "said": said.strip().splitlines()[-1]}, indent=2))
