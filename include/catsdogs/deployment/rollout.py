"""The rollout: put `@champion` on the live endpoint, check it there, roll back when it fails.

    deploy_champion:  @champion resolved ONCE to its version N; everything below works on N
                      N already live? -> nothing rebuilt or restarted (summary says so)
                      preflight: the target's needs (HAProxy, ports, engine, helm) and the
                                 check's labelled pictures, before any work or traffic change
                      a version live, a target that shares traffic (local, compose), and
                      not a rollback (that one switches at once):
                        stage(N), shadow, canary, switch, watch (catsdogs.deployment.phases),
                        finish: drain and stop the old version
                        a gate failed -> traffic back to the old version (never stopped), N
                                stopped, @champion back (by `live traffic gate`),
                                deploy.status=rolled_back + deploy.reason naming the gate on N,
                                UserError naming the phase and the gate
                      otherwise: target.deploy(N)    start new, /readyz, switch, drain, stop old
                      post-deploy check (check.py)   >= 50 labelled test pictures, live endpoint
                      passed -> deploy.status=deployed on N
                      failed -> @champion back to the champion before N (post-deploy check),
                                deploy.status=rolled_back + deploy.reason on N,
                                the previous champion redeployed, UserError with the reason
    rollback:         @champion to --to VERSION or the previous champion (rollback), the version
                      it left tagged rolled_back, then the same rollout of that version.

Every alias move goes through `catsdogs.registry.history.move_champion`, every `deploy.*` tag
through `catsdogs.registry.history.mark_deployment`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any, NoReturn

from catsdogs.config import Params
from catsdogs.console import bind_log_fields
from catsdogs.deployment import phases
from catsdogs.deployment.check import labelled_pictures, run_check, verdict
from catsdogs.deployment.release import Release, Skipped, Target
from catsdogs.errors import MlflowUnavailable, UserError
from catsdogs.paths import DataPaths
from catsdogs.registry.history import mark_deployment, move_champion, previous_champion
from catsdogs.registry.names import (
    BY_LIVE_GATE,
    BY_POST_DEPLOY_CHECK,
    BY_ROLLBACK,
    CHAMPION,
    DEPLOY_STATUS_TAG,
    DEPLOYED,
    ROLLED_BACK,
)
from catsdogs.registry.record import VersionRecord, find, resolve
from catsdogs.summary import Summary

log = logging.getLogger(__name__)

ACCURACY_METRIC = "test_accuracy"   # logged by the train stage on the test split


def recorded_accuracy(client: Any, record: VersionRecord) -> float | None:
    """The version's `test_accuracy` from its training run (None when it was not logged)."""
    if not record.run_id:
        return None
    return client.get_run(record.run_id).data.metrics.get(ACCURACY_METRIC)


def preflight(params: Params, paths: DataPaths, target: Target) -> list[tuple[Path, str]]:
    """Every precondition of a rollout, checked before any work and before traffic is touched:
    the target's own (`Target.preflight`: binaries, ports, engine) and the post-deploy check's
    labelled pictures. Returns those pictures; raises UserError (or Skipped) naming the problem."""
    target.preflight()   # first: a target not available here is a skip, not an error
    return labelled_pictures(paths.split_dir("test"), params.deploy.check_images,
                             params.deploy.seed)


def _check(params: Params, pictures: list[tuple[Path, str]], target: Target, client: Any,
           record: VersionRecord) -> tuple[str | None, dict[str, Any]]:
    """(reason to roll back or None, the check's figures)."""
    result = run_check(target.endpoint(), pictures)
    expected = recorded_accuracy(client, record)
    reason = verdict(result, record.version, expected, params.deploy.accuracy_tolerance,
                     params.deploy.min_accuracy)
    return reason, {**result.to_dict(), "recorded_accuracy": expected}


def _skipped(target: Target, version: str, exc: Skipped) -> Summary:
    return Summary("deploy", f"{target.name} rollout of v{version} skipped: {exc}",
                   skipped=True, details={"deployed": False, "version": version,
                                          "target": target.name, "reason": str(exc)})


def deploy_champion(params: Params, paths: DataPaths, target: Target | None,
                    client: Any, trigger: str = "promote") -> Summary:
    """Roll `@champion` out to `target` (None: deploy.target=none, nothing happens) and check it.

    The alias is resolved once, before anything else: the rollout deploys, checks and tags that
    version even when the alias moves meanwhile. Returns the summary (skipped when the champion
    is already live or the target is not available here). Raises UserError when there is no
    champion, the new version never became ready (nothing switched), or the post-deploy check
    failed (after the rollback)."""
    name = params.mlflow.registered_model_name
    if target is None:
        return _nothing_deployed()
    champion = find(client, name, CHAMPION)
    if champion is None:
        raise UserError(f"no {name}@{CHAMPION} to deploy; run the training DAG (train, "
                        "promote) first")
    return _roll_out(params, paths, target, client, champion, trigger)


def _nothing_deployed() -> Summary:
    return Summary("deploy", "deploy.target is none: nothing deployed", skipped=True,
                   details={"deployed": False, "target": "none"})


def _roll_out(params: Params, paths: DataPaths, target: Target, client: Any,
              champion: VersionRecord, trigger: str) -> Summary:
    """Deploy `champion` (resolved by the caller) to `target`, check it live, and on a failed
    check bring the champion before it back; see `deploy_champion`."""
    name, version = champion.name, champion.version
    bind_log_fields(model=name, model_version=version)  # every later line names the version
    live = target.serving()
    if live == version:
        return Summary("deploy", f"{name} v{version} (@champion) is already serving on "
                       f"{target.name}: nothing rebuilt or restarted", skipped=True,
                       details={"deployed": False, "version": version, "target": target.name,
                                "trigger": trigger, "endpoint": target.endpoint()})
    reports: list[phases.PhaseReport] = []
    try:
        pictures = preflight(params, paths, target)
        started = time.monotonic()
        # a rollback is urgent: it switches at once, without the live-traffic phases
        if live is not None and isinstance(target, phases.Phased) and trigger != "rollback":
            facts, reports = _phased(params, paths, target, Release(name, version), live)
        else:
            facts = target.deploy(Release(name, version))
    except Skipped as exc:
        return _skipped(target, version, exc)
    except phases.GateFailed as exc:
        _gate_failed(client, target, champion, live, exc)
    switch_s = time.monotonic() - started
    reason, check = _check(params, pictures, target, client, champion)
    details: dict[str, Any] = {"version": version, "previous_version": live,
                               "target": target.name, "trigger": trigger,
                               "endpoint": target.endpoint(), "switch_s": round(switch_s, 1),
                               "check": check, **facts,
                               "phases": [r.to_dict() for r in reports]}
    if reason is None:
        mark_deployment(client, name, version, DEPLOYED, target.name)
        message = (f"{name} v{version} live on {target.name} at {target.endpoint()} "
                   f"(was {'v' + live if live else 'nothing'}){phases.summary_line(reports)}; "
                   f"post-deploy check: {check['sent']} requests, accuracy "
                   f"{check['accuracy']:.3f}")
        log.info("%s", message)
        return Summary("deploy", message, details={"deployed": True, **details})

    # The check failed: the previous champion comes back, the failed version is marked.
    previous = previous_champion(client, name, current=version)
    mark_deployment(client, name, version, ROLLED_BACK, target.name, reason)
    log.error("post-deploy check of v%s failed: %s", version, reason)
    if previous is None:
        raise UserError(f"post-deploy check of {name} v{version} failed: {reason}; there is no "
                        f"earlier champion to roll back to, so v{version} keeps serving "
                        f"({DEPLOY_STATUS_TAG}={ROLLED_BACK})")
    move_champion(client, name, previous, reason=f"post-deploy check of v{version}: {reason}",
                  by=BY_POST_DEPLOY_CHECK)
    target.deploy(Release(name, previous))
    mark_deployment(client, name, previous, DEPLOYED, target.name)
    raise UserError(f"post-deploy check of {name} v{version} failed: {reason}; rolled back: "
                    f"@champion is v{previous} again and serving on {target.name} "
                    f"(v{version} tagged {DEPLOY_STATUS_TAG}={ROLLED_BACK})")


def _phased(params: Params, paths: DataPaths, target: phases.Phased, release: Release,
            live: str) -> tuple[dict[str, Any], list[phases.PhaseReport]]:
    """Stage the release beside the live version `live`, run the live-traffic phases, then
    finish (the old version drained and stopped). Anything raised (a failed gate, an error,
    SIGTERM, Ctrl-C) sends traffic back to `live` and stops the new version first."""
    from catsdogs.monitoring.prediction_log import log_url, read_predictions

    facts = target.stage(release)
    try:
        reports = phases.run(params.deploy, target,
                             functools.partial(read_predictions, log_url(paths.root)),
                             release.version, live)
    except BaseException:
        target.abandon()
        raise
    return {**facts, **target.finish()}, reports


def _gate_failed(client: Any, target: Target, champion: VersionRecord, live: str,
                 exc: phases.GateFailed) -> NoReturn:
    """A live-traffic gate failed (traffic is back on `live`): the version is tagged
    rolled_back with the gate as its reason, @champion goes back. Always raises UserError
    naming the phase and the gate."""
    name, version = champion.name, champion.version
    reason = f"{exc.report.phase} gate '{exc.report.gate}': {exc.report.reason}"
    log.error("v%s stopped at the %s phase: %s", version, exc.report.phase, reason)
    mark_deployment(client, name, version, ROLLED_BACK, target.name, reason)
    previous = previous_champion(client, name, current=version)
    if previous is not None:
        move_champion(client, name, previous, reason=f"v{version} {reason}", by=BY_LIVE_GATE)
    seen = "; ".join(r.line() for r in exc.reports)
    back = (f"@champion is v{previous} again" if previous is not None
            else "@champion stays (no earlier champion)")
    raise UserError(f"{exc.report.phase} gate '{exc.report.gate}' failed for {name} v{version}: "
                    f"{exc.report.reason}; rolled back: {back}, v{live} kept serving on "
                    f"{target.name} ({DEPLOY_STATUS_TAG}={ROLLED_BACK} on v{version}; {seen})"
                    ) from None


def rollback(params: Params, paths: DataPaths, target: Target | None, client: Any,
             to_version: str | None = None) -> Summary:
    """Move `@champion` to `to_version` (default: the previous champion), mark the version it
    left `deploy.status=rolled_back`, and deploy the version it moved to (not whatever the alias
    points at by then). UserError when there is nothing to roll back to or the version does not
    exist."""
    name = params.mlflow.registered_model_name
    found = find(client, name, CHAMPION)
    current = found.version if found is not None else None
    target_version = str(to_version) if to_version else previous_champion(client, name, current)
    if target_version is None:
        raise UserError(f"{name} has no earlier champion to roll back to; name one with "
                        "--to VERSION")
    try:
        chosen = resolve(client, f"models:/{name}/{target_version}")
    except MlflowUnavailable:
        raise
    except UserError:
        raise UserError(f"{name} has no version {target_version}; `catsdogs champion history` "
                        "lists the champions") from None
    if target is not None and current != target_version:
        with contextlib.suppress(Skipped):     # not available here: the alias still moves
            preflight(params, paths, target)   # nothing moves when the rollout cannot run
    if current != target_version:
        reason = f"rollback from v{current} requested" if current else "rollback requested"
        move_champion(client, name, target_version, reason=reason, by=BY_ROLLBACK)
        if current:
            mark_deployment(client, name, current, ROLLED_BACK, target.name if target else "none",
                            f"rolled back by hand to v{target_version}")
    summary = (_roll_out(params, paths, target, client, chosen, trigger="rollback")
               if target is not None else _nothing_deployed())
    summary.details.update(rolled_back_from=current, rolled_back_to=target_version)
    summary.message = f"@champion v{current} -> v{target_version} (rollback); {summary.message}"
    return summary
