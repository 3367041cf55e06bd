"""The deploy stage: roll `@champion` out to the configured target, then check it live.

Runs after `promote` in the training DAG. When promote kept the champion and it is already
serving, nothing is rebuilt or restarted and the summary says so (`deployed: false`). The target
comes from `deploy.target` / $CATSDOGS_DEPLOY_TARGET (catsdogs.deployment.targets); the rollout,
post-deploy check and automatic rollback from catsdogs.deployment.rollout (docs/rollout.md).
"""

from __future__ import annotations

from catsdogs.config import Params
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary


def run(params: Params, paths: DataPaths) -> Summary:
    from mlflow import MlflowClient

    from catsdogs import tracking
    from catsdogs.deployment import targets
    from catsdogs.deployment.rollout import deploy_champion

    target = targets.choose(params, paths)
    if target is None:
        return deploy_champion(params, paths, None, None)
    tracking.connect(paths)
    return deploy_champion(params, paths, target, MlflowClient())
