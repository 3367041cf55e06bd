"""The champion's history: every move of the `@champion` alias, recorded on the model versions.

MLflow keeps only where an alias points now, so each move is also written as a model-version tag
on the version the alias moved to (and on the one it left), key `champion.move.<UTC ms>` and value
the move as JSON. `champion_history` reads them back from all versions of the model; the tags
survive alias moves and are visible in the MLflow UI next to the version.

All alias moves go through `move_champion` (promote, rollback, the post-deploy check); it also
re-renders the model cards of both versions (`catsdogs.training.model_card`), whose history
section lists these moves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

CHAMPION = "champion"
MOVE_TAG_PREFIX = "champion.move."
BY_PROMOTE = "promote"
BY_ROLLBACK = "rollback"
BY_POST_DEPLOY_CHECK = "post-deploy check"
DEPLOY_STATUS_TAG = "deploy.status"     # on a version: deployed | rolled_back
DEPLOY_REASON_TAG = "deploy.reason"     # why (a failed post-deploy check's figures)
DEPLOY_TIME_TAG = "deploy.time"         # when the status was set, ISO-8601 UTC
DEPLOY_TARGET_TAG = "deploy.target"     # where: local | compose | kubernetes
ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class AliasMove:
    """One move of `@champion`: when (ISO-8601 UTC), from which version (None: the first
    champion) to which, why, and by what (promote / rollback / post-deploy check)."""

    time: str
    from_version: str | None
    to_version: str
    reason: str
    by: str

    def line(self) -> str:
        """One human-readable line, as `catsdogs champion history` prints it."""
        source = f"v{self.from_version}" if self.from_version else "(none)"
        return f"{self.time}  {source:>7} -> v{self.to_version:<5} {self.by:<17} {self.reason}"


def _current(client: Any, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except Exception:  # noqa: BLE001 - MlflowException when the alias (or model) does not exist
        return None


def move_champion(client: Any, name: str, to_version: str, *, reason: str, by: str) -> AliasMove:
    """Point `name@champion` at `to_version`, record the move on both versions and refresh their
    model cards.

    `client` is an `mlflow.MlflowClient`. Returns the recorded move. Raises MlflowException when
    the version does not exist. A card that cannot be refreshed (the move itself succeeded) is a
    warning naming the command that refreshes it.
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


def refresh_cards(client: Any, name: str, *versions: str | None) -> None:
    """Re-render the model cards of `versions` (after their alias or deploy.* tags changed); a
    refusal is a warning naming the command that refreshes one."""
    from mlflow.exceptions import MlflowException

    from catsdogs.training.model_card import refresh_card

    try:
        refresh_card(client, name, *versions)
    except MlflowException as exc:
        log.warning("the model cards of %s %s were not refreshed (%s); run `catsdogs champion "
                    "card --version N` to refresh one", name,
                    ", ".join(f"v{v}" for v in versions if v), exc)


def champion_history(client: Any, name: str) -> list[AliasMove]:
    """Every recorded move of `name@champion`, oldest first (empty when there was none)."""
    return _history(client.search_model_versions(f"name = '{name}'"))


def _history(versions: list[Any]) -> list[AliasMove]:
    moves: dict[str, AliasMove] = {}
    for version in versions:
        for key, value in (version.tags or {}).items():
            if key.startswith(MOVE_TAG_PREFIX):
                moves[key] = AliasMove(**json.loads(value))
    return [moves[key] for key in sorted(moves, key=lambda k: int(k.removeprefix(MOVE_TAG_PREFIX)))]


def previous_champion(client: Any, name: str) -> str | None:
    """The latest earlier champion that is not the current one and was not rolled back
    (`deploy.status=rolled_back`); None when there is none."""
    versions = client.search_model_versions(f"name = '{name}'")
    rolled_back = {str(v.version) for v in versions
                   if (v.tags or {}).get(DEPLOY_STATUS_TAG) == ROLLED_BACK}
    moves = _history(versions)
    champions = ([moves[0].from_version] if moves and moves[0].from_version else [])
    champions += [move.to_version for move in moves]
    current = _current(client, name)
    for version in reversed(champions):
        if version != current and version not in rolled_back:
            return version
    return None
