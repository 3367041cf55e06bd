"""The post-deploy check's pieces, `catsdogs rollback` on a real MLflow server (no target:
`deploy.target=none`, so only the registry moves; the rollout itself is in test_local_rollout),
and the rollout's one resolution of `@champion` (a stand-in target that moves the alias)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from catsdogs.config import load_params
from catsdogs.deployment.check import CheckResult, labelled_pictures, verdict
from catsdogs.deployment.release import Release, Skipped
from catsdogs.deployment.rollout import deploy_champion, rollback
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.registry.history import champion_history, move_champion
from catsdogs.registry.names import (
    BY_PROMOTE,
    BY_ROLLBACK,
    DEPLOY_STATUS_TAG,
    ROLLED_BACK,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pictures(root: Path, cats: int, dogs: int) -> Path:
    for label, count in (("cat", cats), ("dog", dogs)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            (root / label / f"{i}.jpg").write_bytes(b"x")
    return root


def test_labelled_pictures_are_balanced_seeded_and_enough(tmp_path: Path) -> None:
    test_dir = _pictures(tmp_path / "test", cats=40, dogs=30)
    chosen = labelled_pictures(test_dir, 50, seed=3)
    labels = [label for _, label in chosen]
    assert len(chosen) == 50 and labels.count("cat") == 25 and labels.count("dog") == 25
    assert all(path.parent.name == label for path, label in chosen)
    assert chosen == labelled_pictures(test_dir, 50, seed=3)
    assert chosen != labelled_pictures(test_dir, 50, seed=4)
    assert len({label for _, label in labelled_pictures(test_dir, 70)}) == 2  # all of them
    with pytest.raises(UserError, match="needs 71 labelled pictures .* holds 70"):
        labelled_pictures(test_dir, 71)


@pytest.mark.parametrize(("result", "recorded", "floor", "reason"), [
    (CheckResult(50, 0, 45, {"3": 50}), 0.92, 0.0, None),
    (CheckResult(50, 1, 45, {"3": 49}, ("a.jpg: 502",)), 0.92, 0.0, "1 of 50 requests"),
    (CheckResult(50, 0, 40, {"3": 50}), 0.92, 0.0, "below v3's recorded test accuracy 0.920"),
    (CheckResult(50, 0, 45, {"3": 40, "2": 10}), 0.92, 0.0, "other versions than v3"),
    (CheckResult(50, 0, 45, {"3": 50}), None, 0.95, "below the floor 0.95"),
])
def test_verdict(result: CheckResult, recorded: float | None, floor: float,
                 reason: str | None) -> None:
    found = verdict(result, "3", recorded, 0.05, floor)
    assert (found is None) if reason is None else (reason in (found or "")), found


def _registered(client: MlflowClient, kind: str, tmp_path: Path,
                count: int) -> tuple[str, list[str]]:
    """A registered model of `count` empty versions (a run each), named for this test."""
    name = f"CatsDogs{kind}{tmp_path.name[-6:].replace('_', '')}"
    client.create_registered_model(name)
    experiment = client.create_experiment(f"{kind.lower()}-{tmp_path.name}")
    versions = []
    for _ in range(count):
        run = client.create_run(experiment).info.run_id
        versions.append(client.create_model_version(name, f"runs:/{run}/model", run_id=run).version)
    return name, versions


def test_rollback_moves_the_champion_back_and_marks_the_version_it_left(
        tmp_path: Path, tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    name, versions = _registered(client, "Rollback", tmp_path, 3)
    for version in versions:
        move_champion(client, name, version, reason="test", by=BY_PROMOTE)
    params = load_params(REPO_ROOT / "params.yaml", [f"mlflow.registered_model_name={name}",
                                                     "deploy.target=none"])
    paths = DataPaths.resolve(tmp_path)

    summary = rollback(params, paths, None, client)
    assert client.get_model_version_by_alias(name, "champion").version == versions[1]
    assert summary.details["rolled_back_to"] == versions[1]
    assert "nothing deployed" in summary.message
    assert client.get_model_version(name, versions[2]).tags[DEPLOY_STATUS_TAG] == ROLLED_BACK
    last = champion_history(client, name)[-1]
    assert (last.from_version, last.to_version, last.by) == (versions[2], versions[1],
                                                             BY_ROLLBACK)
    # again: v3 is marked rolled back, so the previous champion is v1
    rollback(params, paths, None, client)
    assert client.get_model_version_by_alias(name, "champion").version == versions[0]
    with pytest.raises(UserError, match="has no version 99"):
        rollback(params, paths, None, client, "99")


def test_rollback_command_errors_are_one_line(tmp_path: Path, tracking_uri: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "catsdogs.cli", "rollback", "--to", "5", "--set",
         "mlflow.registered_model_name=NoSuchModelHere", "--set", "deploy.target=none",
         "--data-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=120)
    assert done.returncode != 0
    assert "catsdogs rollback: error:" in done.stderr and "Traceback" not in done.stderr


@dataclass
class PromotedDuringPreflight:
    """A stand-in deployment target: the thing under test is the rollout's resolution of
    `@champion`, not a target. Its preflight moves `@champion` to `promote_to`, as a promotion
    landing at that moment would; `deploy` records the release it was given, then says the
    target is not available here."""

    client: MlflowClient
    model: str
    promote_to: str
    name: str = "stand-in"
    released: list[Release] = field(default_factory=list)

    def preflight(self) -> None:
        move_champion(self.client, self.model, self.promote_to, reason="promoted meanwhile",
                      by=BY_PROMOTE)

    def endpoint(self) -> str:
        return "http://127.0.0.1:9"

    def serving(self) -> str | None:
        return None

    def deploy(self, release: Release) -> dict[str, Any]:
        self.released.append(release)
        raise Skipped("a stand-in target deploys nothing")


def test_deploy_resolves_the_champion_once(tmp_path: Path, tracking_uri: str) -> None:
    """A promotion between the rollout's resolution of @champion and its deployment cannot
    change what it deploys: the release and the summary are the version resolved first."""
    client = MlflowClient(tracking_uri)
    name, versions = _registered(client, "DeployOnce", tmp_path, 2)
    move_champion(client, name, versions[0], reason="test", by=BY_PROMOTE)
    params = load_params(REPO_ROOT / "params.yaml", [f"mlflow.registered_model_name={name}"])
    paths = DataPaths.resolve(tmp_path)
    _pictures(paths.split_dir("test"), cats=30, dogs=30)
    target = PromotedDuringPreflight(client, name, versions[1])

    summary = deploy_champion(params, paths, target, client)
    assert client.get_model_version_by_alias(name, "champion").version == versions[1]  # moved
    assert target.released == [Release(name, versions[0])]
    assert summary.skipped and summary.details["version"] == versions[0]
