"""`catsdogs champion history | card`: what the `@champion` alias did, and a version's model card.

    catsdogs champion history [--json]           every move of @champion, oldest first: time,
                                                 from, to, by (promote / rollback / post-deploy
                                                 check) and reason
    catsdogs champion card [--version N] [--json]  the model card of version N (default: the
                                                 champion), re-rendered and stored again

A CLI command only (not a task of the training DAG): it reads the registry and changes no alias;
it never creates a store (`tracking.connect(create=False)`), and says which store it read (the
message and the summary's `store`, credentials left out).
The moves are the `champion.move.*` tags `catsdogs.registry.history.move_champion` writes; the
card is `catsdogs.registry.model_card`.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary

ACTIONS = ("history", "card")
HEADER = f"{'time (UTC)':<29}  {'from':>7} -> {'to':<6} {'by':<17} reason"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS,
                        help="history: the moves of @champion; card: a version's model card")
    parser.add_argument("--model", default=None,
                        help="registered model name (default: mlflow.registered_model_name)")
    parser.add_argument("--version", default=None,
                        help="card: the model version (default: the current champion)")


def history(name: str, store: str) -> Summary:
    """The moves of `name@champion` (after `tracking.connect`) in `store` (as shown)."""
    from mlflow import MlflowClient

    from catsdogs.registry.history import champion_history
    from catsdogs.registry.names import CHAMPION
    from catsdogs.registry.record import find

    client = MlflowClient()
    moves = champion_history(client, name)
    current = find(client, name, CHAMPION)
    now = f"v{current.version}" if current is not None else "not set"
    if not moves:
        message = f"{name}@champion is {now} in {store}; no move of it is recorded yet"
    else:
        message = "\n".join([f"{name}@champion is {now} in {store}; {len(moves)} moves, oldest "
                              "first:", HEADER, *(move.line() for move in moves)])
    return Summary("champion", message, details={
        "store": store, "model": name, "champion": current.version if current is not None else None,
        "moves": [asdict(move) for move in moves]})


def card(name: str, version: str | None, store: str) -> Summary:
    """The model card of `name` version `version` (default: the champion) in `store` (as
    shown), refreshed."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from catsdogs import tracking
    from catsdogs.registry.model_card import refresh_card
    from catsdogs.registry.names import CARD_ARTIFACT, CHAMPION
    from catsdogs.registry.record import find

    client = MlflowClient()
    if version is None:
        current = find(client, name, CHAMPION)
        if current is None:
            raise UserError(f"{name} has no @champion in {store}: give --version N (or run "
                            "`catsdogs promote` first)")
        version = current.version
    try:
        text = refresh_card(client, name, version)[version]
    except MlflowException as exc:
        tracking.raise_if_outage(exc, f"refreshing the model card of {name} v{version}")
        raise UserError(f"{name} v{version} in {store}: {exc.message}; list the versions in the MLflow UI "
                        "or with `catsdogs champion history`") from None
    return Summary("champion", f"model card of {name} v{version} in {store} (also the "
                   f"version's description and `{CARD_ARTIFACT}` of its run):\n\n{text}",
                   details={"store": store, "model": name, "version": version, "card": text})


def run(params: Params, paths: DataPaths, action: str, model: str | None = None,
        version: str | None = None) -> Summary:
    from catsdogs import tracking

    store = tracking.shown_uri(tracking.connect(paths, create=False))
    name = model or params.mlflow.registered_model_name
    return history(name, store) if action == "history" else card(name, version, store)
