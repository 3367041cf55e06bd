"""The champion's history: every move of the `@champion` alias and the rollout's status, recorded
on the model versions.

MLflow keeps only where an alias points now, so each move is also written as a model-version tag
on the version the alias moved to (and on the one it left), key `champion.move.<UTC ms>` and value
the move as JSON (`record.AliasMove`). `champion_history` reads them back from all versions of the
model; the tags survive alias moves and are visible in the MLflow UI next to the version.

All alias moves go through `move_champion` (promote, rollback, the post-deploy check) and all
`deploy.*` tags through `mark_deployment`; both re-render the model cards of the versions they
touched (`catsdogs.registry.model_card`), whose history section lists these facts.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from catsdogs.registry.model_card import refresh_card
from catsdogs.registry.names import (
    CHAMPION,
    DEPLOY_REASON_TAG,
    DEPLOY_STATUS_TAG,
    DEPLOY_TARGET_TAG,
    DEPLOY_TIME_TAG,
    MOVE_TAG_PREFIX,
    ROLLED_BACK,
)
from catsdogs.registry.record import AliasMove, recorded_moves
from catsdogs.tracking import raise_if_outage

log = logging.getLogger(__name__)


def _current(client: Any, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except Exception as exc:  # noqa: BLE001 - MlflowException when the alias (or model) does not exist
        raise_if_outage(exc, f"looking up {name}@{CHAMPION}")
        return None


def move_champion(client: Any, name: str, to_version: str, *, reason: str, by: str) -> AliasMove:
    """Point `name@champion` at `to_version`, record the move on both versions and refresh their
    model cards.

    `client` is an `mlflow.MlflowClient`; `by` one of `names.BY_*`. Returns the recorded move.
    Raises MlflowException when the version does not exist. A card that cannot be refreshed (the
    move itself succeeded) is a warning naming the command that refreshes it.

    The alias moves first, then the move is tagged; a server lost in between leaves a move
    without its record, which `record_missing_move` (called by promote when it finds the
    challenger already champion) writes the next time.
    """
    now_ms = int(time.time() * 1000)
    move = AliasMove(time=datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds"),
                     from_version=_current(client, name), to_version=str(to_version),
                     reason=reason, by=by)
    client.set_registered_model_alias(name, CHAMPION, str(to_version))
    value = json.dumps(asdict(move), sort_keys=True)
    for version in {move.to_version, move.from_version} - {None}:
        client.set_model_version_tag(name, version, f"{MOVE_TAG_PREFIX}{now_ms}", value)
    log.info("%s@%s: v%s -> v%s by %s (%s)", name, CHAMPION, move.from_version or "-",
             move.to_version, by, reason)
    refresh_cards(client, name, move.to_version, move.from_version)
    return move


def record_missing_move(client: Any, name: str, version: str, from_version: str | None, *,
                        reason: str, by: str) -> AliasMove | None:
    """Record the move of `@champion` to `version` when the version's tags have no move to it
    (its `move_champion` lost the server after the alias moved); None when one is recorded."""
    found = client.get_model_version(name, version)
    if any(move.to_version == str(version) for move in recorded_moves(found.tags or {}).values()):
        return None
    now_ms = int(time.time() * 1000)
    move = AliasMove(time=datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds"),
                     from_version=from_version, to_version=str(version), reason=reason, by=by)
    value = json.dumps(asdict(move), sort_keys=True)
    for each in {move.to_version, move.from_version} - {None}:
        client.set_model_version_tag(name, each, f"{MOVE_TAG_PREFIX}{now_ms}", value)
    log.info("%s@%s: the move to v%s had no record (the server was lost after the alias "
             "moved); recorded now", name, CHAMPION, version)
    refresh_cards(client, name, move.to_version, move.from_version)
    return move


def mark_deployment(client: Any, name: str, version: str, status: str, target: str,
                    reason: str = "") -> None:
    """Tag `name` version `version` with the rollout's outcome: `deploy.status` (`names.DEPLOYED`
    or `names.ROLLED_BACK`), `deploy.time` (now, ISO-8601 UTC), `deploy.target` (the target's
    name) and, when given, `deploy.reason`; then refresh its model card. Raises MlflowException
    when the registry refuses a tag. `deploy.status`, the tag the rollout and rollback read, is
    written last: a server lost half-way leaves the old status with new details at worst, and
    the next rollout writes all four again."""
    client.set_model_version_tag(name, version, DEPLOY_TIME_TAG,
                                 datetime.now(UTC).isoformat(timespec="seconds"))
    client.set_model_version_tag(name, version, DEPLOY_TARGET_TAG, target)
    if reason:
        client.set_model_version_tag(name, version, DEPLOY_REASON_TAG, reason)
    client.set_model_version_tag(name, version, DEPLOY_STATUS_TAG, status)
    refresh_cards(client, name, version)   # the card shows the deployment


def refresh_cards(client: Any, name: str, *versions: str | None) -> None:
    """Re-render the model cards of `versions` (after their alias or deploy.* tags changed); a
    refusal is a warning naming the command that refreshes one."""
    from mlflow.exceptions import MlflowException

    try:
        refresh_card(client, name, *versions)
    except MlflowException as exc:
        raise_if_outage(exc, f"refreshing the model cards of {name}")
        log.warning("the model cards of %s %s were not refreshed (%s); run `catsdogs champion "
                    "card --version N` to refresh one", name,
                    ", ".join(f"v{v}" for v in versions if v), exc)


def champion_history(client: Any, name: str) -> list[AliasMove]:
    """Every recorded move of `name@champion`, oldest first (empty when there was none)."""
    return _history(client.search_model_versions(f"name = '{name}'"))


def _history(versions: list[Any]) -> list[AliasMove]:
    moves: dict[int, AliasMove] = {}
    for version in versions:
        moves |= recorded_moves(version.tags or {})
    return [moves[key] for key in sorted(moves)]


def previous_champion(client: Any, name: str, current: str | None = None) -> str | None:
    """The latest earlier champion that is not `current` and was not rolled back
    (`deploy.status=rolled_back`); None when there is none. `current`: the champion version the
    caller resolved (default: where `@champion` points now)."""
    versions = client.search_model_versions(f"name = '{name}'")
    rolled_back = {str(v.version) for v in versions
                   if (v.tags or {}).get(DEPLOY_STATUS_TAG) == ROLLED_BACK}
    moves = _history(versions)
    champions = ([moves[0].from_version] if moves and moves[0].from_version else [])
    champions += [move.to_version for move in moves]
    current = current if current is not None else _current(client, name)
    for version in reversed(champions):
        if version != current and version not in rolled_back:
            return version
    return None
