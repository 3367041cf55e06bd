"""Where a model version is rolled out: one module per target, each a `Target`.

- `local`: two `bentoml serve` slots behind a local HAProxy (`make demo`, scripts/serve.sh);
- `compose`: a blue/green pair of Bento containers behind compose's HAProxy;
- `kubernetes`: `helm upgrade` of the helm/catsdogs chart with the version's image tag.

`choose` picks one from `deploy.target` (params.yaml) and, for `auto`, $CATSDOGS_DEPLOY_TARGET
(compose and the Helm chart set it; unset: local). Nothing heavy is imported here.
"""

from __future__ import annotations

from catsdogs.config import Params
from catsdogs.deployment.release import Target
from catsdogs.paths import DataPaths
from catsdogs.settings import DeploySettings, load


def target_name(params: Params) -> str:
    """`deploy.target`, or for `auto` $CATSDOGS_DEPLOY_TARGET (default local); SettingsError
    (a UserError) for an unknown one."""
    chosen = params.deploy.target
    return load(DeploySettings).deploy_target if chosen == "auto" else chosen


def choose(params: Params, paths: DataPaths) -> Target | None:
    """The configured target (None for `none`: nothing is deployed)."""
    name = target_name(params)
    if name == "none":
        return None
    if name == "local":
        from catsdogs.deployment.targets.local import LocalTarget

        return LocalTarget.from_env(paths, params)
    if name == "compose":
        from catsdogs.deployment.targets.compose import ComposeTarget

        return ComposeTarget.from_env(params)
    from catsdogs.deployment.targets.kubernetes import KubernetesTarget

    return KubernetesTarget.from_env(params)
