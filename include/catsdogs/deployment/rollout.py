"""The rollout: put `@champion` on the live endpoint, check it there, roll back when it fails.

    deploy_champion:  champion already live? -> nothing rebuilt or restarted (summary says so)
                      preflight: the target's needs (nginx, ports, engine, helm) and the
                                 check's labelled pictures, before any work or traffic change
                      target.deploy(champion)        start new, /readyz, switch, drain, stop old
                      post-deploy check (check.py)   >= 50 labelled test pictures, live endpoint
                      passed -> deploy.status=deployed on the version
                      failed -> @champion back to the previous champion (post-deploy check),
                                deploy.status=rolled_back + deploy.reason on the version,
                                the previous champion redeployed, UserError with the reason
    rollback:         @champion to --to VERSION or the previous champion (rollback), the version
                      it left tagged rolled_back, then the same deployment.

Every alias move goes through `catsdogs.deployment.history.move_champion`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.deployment.check import labelled_pictures, run_check, verdict
from catsdogs.deployment.history import (
    DEPLOY_REASON_TAG,
    DEPLOY_STATUS_TAG,
    DEPLOY_TARGET_TAG,
    DEPLOY_TIME_TAG,
    refresh_cards,
)
from catsdogs.deployment.release import Release, Skipped, Target
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary

log = logging.getLogger(__name__)

DEPLOYED = "deployed"
ACCURACY_METRIC = "test_accuracy"   # logged by the train stage on the test split


def recorded_accuracy(client: Any, name: str, version: str) -> float | None:
    """The version's `test_accuracy` from its training run (None when it was not logged)."""
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        return None
    return client.get_run(run_id).data.metrics.get(ACCURACY_METRIC)


def _tag(client: Any, name: str, version: str, status: str, target: str, reason: str = "") -> None:
    client.set_model_version_tag(name, version, DEPLOY_STATUS_TAG, status)
    client.set_model_version_tag(name, version, DEPLOY_TIME_TAG,
                                 datetime.now(UTC).isoformat(timespec="seconds"))
    client.set_model_version_tag(name, version, DEPLOY_TARGET_TAG, target)
    if reason:
        client.set_model_version_tag(name, version, DEPLOY_REASON_TAG, reason)
    refresh_cards(client, name, version)   # the card shows the deployment


def preflight(params: Params, paths: DataPaths, target: Target) -> list[tuple[Path, str]]:
    """Every precondition of a rollout, checked before any work and before traffic is touched:
    the target's own (`Target.preflight`: binaries, ports, engine) and the post-deploy check's
    labelled pictures. Returns those pictures; raises UserError (or Skipped) naming the problem."""
    target.preflight()   # first: a target not available here is a skip, not an error
    return labelled_pictures(paths.split_dir("test"), params.deploy.check_images,
                             params.deploy.seed)


def _check(params: Params, pictures: list[tuple[Path, str]], target: Target, client: Any,
           name: str, version: str) -> tuple[str | None, dict[str, Any]]:
    """(reason to roll back or None, the check's figures)."""
    result = run_check(target.endpoint(), pictures)
    expected = recorded_accuracy(client, name, version)
    reason = verdict(result, version, expected, params.deploy.accuracy_tolerance,
                     params.deploy.min_accuracy)
    return reason, {**result.to_dict(), "recorded_accuracy": expected}


def _skipped(target: Target, version: str, exc: Skipped) -> Summary:
    return Summary("deploy", f"{target.name} rollout of v{version} skipped: {exc}",
                   skipped=True, details={"deployed": False, "version": version,
                                          "target": target.name, "reason": str(exc)})


def deploy_champion(params: Params, paths: DataPaths, target: Target | None,
                    client: Any, trigger: str = "promote") -> Summary:
    """Roll `@champion` out to `target` (None: deploy.target=none, nothing happens) and check it.

    Returns the summary (skipped when the champion is already live or the target is not
    available here). Raises UserError when there is no champion, the new version never became
    ready (nothing switched), or the post-deploy check failed (after the rollback)."""
    from catsdogs.deployment.history import (
        BY_POST_DEPLOY_CHECK,
        CHAMPION,
        ROLLED_BACK,
        move_champion,
        previous_champion,
    )

    name = params.mlflow.registered_model_name
    if target is None:
        return Summary("deploy", "deploy.target is none: nothing deployed", skipped=True,
                       details={"deployed": False, "target": "none"})
    try:
        champion = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except Exception as exc:  # noqa: BLE001 - MlflowException: no such alias or model
        raise UserError(f"no {name}@{CHAMPION} to deploy ({exc}); run the training DAG "
                        "(train, promote) first") from None
    live = target.serving()
    if live != champion:
        try:
            pictures = preflight(params, paths, target)
        except Skipped as exc:
            return _skipped(target, champion, exc)
    if live == champion:
        return Summary("deploy", f"{name} v{champion} (@champion) is already serving on "
                       f"{target.name}: nothing rebuilt or restarted", skipped=True,
                       details={"deployed": False, "version": champion, "target": target.name,
                                "trigger": trigger, "endpoint": target.endpoint()})
    started = time.monotonic()
    try:
        facts = target.deploy(Release(name, champion))
    except Skipped as exc:
        return _skipped(target, champion, exc)
    switch_s = time.monotonic() - started
    reason, check = _check(params, pictures, target, client, name, champion)
    details: dict[str, Any] = {"version": champion, "previous_version": live,
                               "target": target.name, "trigger": trigger,
                               "endpoint": target.endpoint(), "switch_s": round(switch_s, 1),
                               "check": check, **facts}
    if reason is None:
        _tag(client, name, champion, DEPLOYED, target.name)
        message = (f"{name} v{champion} live on {target.name} at {target.endpoint()} "
                   f"(was {'v' + live if live else 'nothing'}); post-deploy check: "
                   f"{check['sent']} requests, accuracy {check['accuracy']:.3f}")
        log.info("%s", message)
        return Summary("deploy", message, details={"deployed": True, **details})

    # The check failed: the previous champion comes back, the failed version is marked.
    previous = previous_champion(client, name)
    _tag(client, name, champion, ROLLED_BACK, target.name, reason)
    log.error("post-deploy check of v%s failed: %s", champion, reason)
    if previous is None:
        raise UserError(f"post-deploy check of {name} v{champion} failed: {reason}; there is no "
                        f"earlier champion to roll back to, so v{champion} keeps serving "
                        f"({DEPLOY_STATUS_TAG}={ROLLED_BACK})")
    move_champion(client, name, previous, reason=f"post-deploy check of v{champion}: {reason}",
                  by=BY_POST_DEPLOY_CHECK)
    target.deploy(Release(name, previous))
    _tag(client, name, previous, DEPLOYED, target.name)
    raise UserError(f"post-deploy check of {name} v{champion} failed: {reason}; rolled back: "
                    f"@champion is v{previous} again and serving on {target.name} "
                    f"(v{champion} tagged {DEPLOY_STATUS_TAG}={ROLLED_BACK})")


def rollback(params: Params, paths: DataPaths, target: Target | None, client: Any,
             to_version: str | None = None) -> Summary:
    """Move `@champion` to `to_version` (default: the previous champion), mark the version it
    left `deploy.status=rolled_back`, and deploy it. UserError when there is nothing to roll
    back to or the version does not exist."""
    from catsdogs.deployment.history import (
        BY_ROLLBACK,
        CHAMPION,
        ROLLED_BACK,
        move_champion,
        previous_champion,
    )

    name = params.mlflow.registered_model_name
    try:
        current = str(client.get_model_version_by_alias(name, CHAMPION).version)
    except Exception:  # noqa: BLE001 - no champion yet
        current = None
    target_version = str(to_version) if to_version else previous_champion(client, name)
    if target_version is None:
        raise UserError(f"{name} has no earlier champion to roll back to; name one with "
                        "--to VERSION")
    try:
        client.get_model_version(name, target_version)
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
        raise UserError(f"{name} has no version {target_version}; `catsdogs champion history` "
                        "lists the champions") from None
    if target is not None and current != target_version:
        with contextlib.suppress(Skipped):     # not available here: the alias still moves
            preflight(params, paths, target)   # nothing moves when the rollout cannot run
    if current != target_version:
        reason = f"rollback from v{current} requested" if current else "rollback requested"
        move_champion(client, name, target_version, reason=reason, by=BY_ROLLBACK)
        if current:
            _tag(client, name, current, ROLLED_BACK, target.name if target else "none",
                 f"rolled back by hand to v{target_version}")
    summary = deploy_champion(params, paths, target, client, trigger="rollback")
    summary.details.update(rolled_back_from=current, rolled_back_to=target_version)
    summary.message = f"@champion v{current} -> v{target_version} (rollback); {summary.message}"
    return summary
