"""The promote stage: move alias `champion` to the `challenger` only if it scores better.

Both models are scored by the same code on the same current test split (the champion is
re-evaluated there), by `promote.metric`; the challenger must beat the champion by more than
`promote.min_delta`. The decision, both scores and the reason become tags on the challenger's model
version and its run, and its model card shows them. A worse model is never promoted.
"""

from __future__ import annotations

import logging
from typing import Any

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary

log = logging.getLogger(__name__)


def score(ref: Any, paths: DataPaths, metric: str, params: Params) -> float:
    """`metric` of a registered model version on transformed/test (preprocessed at its own size)."""
    from catsdogs import tracking
    from catsdogs.inference.compute import pick_device, resolve_precision
    from catsdogs.training.loading import ImageFolderDataset, make_loader
    from catsdogs.training.loop import predict
    from catsdogs.training.metrics import classification_metrics
    from catsdogs.training.model import eval_transform

    device = pick_device()
    precision = resolve_precision(params.train.precision, device)
    model = tracking.load_model(ref, device)
    loader = make_loader(ImageFolderDataset(paths.split_dir("test"), eval_transform(ref.image_size)),
                         params.train.batch_size, shuffle=False, seed=0,
                         num_workers=params.train.num_workers, device=device)
    labels, probs = predict(model, loader, device, precision)
    return classification_metrics(labels, probs)[metric]


def decide(challenger: float, champion: float | None, min_delta: float,
           metric: str) -> tuple[bool, str]:
    """(promote?, reason). No champion yet: promote. Else only a gain above min_delta."""
    if champion is None:
        return True, "no champion yet"
    if challenger > champion + min_delta:
        return True, (f"challenger {metric} {challenger:.4f} beats champion {champion:.4f} "
                      f"by more than {min_delta}")
    return False, (f"challenger {metric} {challenger:.4f} does not beat champion "
                   f"{champion:.4f} by more than {min_delta}")


def _earlier_decision(challenger: Any, champion: Any, params: Params) -> str | None:
    """Why there is nothing to decide (the stage is up to date), or None: the challenger is the
    champion, or it was already rejected against this champion with this metric and margin (a
    version's training data are fixed, so the same comparison gives the same answer)."""
    if champion is None:
        return None
    if champion.version == challenger.version:
        return "is already the champion"
    tags = challenger.tags
    if (tags.get("promotion.decision") == "rejected"
            and tags.get("promotion.champion_version") == str(champion.version)
            and tags.get("promotion.metric") == params.promote.metric
            and tags.get("promotion.min_delta") == str(params.promote.min_delta)):
        return (f"was already rejected against champion v{champion.version}: "
                f"{tags.get('promotion.reason', '')}")
    return None


def run(params: Params, paths: DataPaths) -> Summary:
    from mlflow import MlflowClient

    from catsdogs import tracking
    from catsdogs.deployment.history import BY_PROMOTE, move_champion
    from catsdogs.training.model_card import refresh_card

    if not paths.split_dir("test").is_dir():
        raise UserError(f"test split missing at {paths.split_dir('test')}; run `catsdogs "
                        "transform` first")
    tracking.connect(paths)
    name, metric = params.mlflow.registered_model_name, params.promote.metric
    challenger_version = tracking.alias_version(name, tracking.CHALLENGER)
    if challenger_version is None:
        raise UserError(f"no {name}@{tracking.CHALLENGER} in the registry; run `catsdogs train` "
                        "first")
    champion_version = tracking.alias_version(name, tracking.CHAMPION)
    judged = _earlier_decision(challenger_version, champion_version, params)
    if judged is not None:
        run_id = challenger_version.run_id
        return Summary("promote", f"{name} v{challenger_version.version} {judged}",
                       skipped=True, details={
                           "version": challenger_version.version, "promoted": False,
                           "champion_version": champion_version.version, "run_id": run_id,
                           "experiment_id": MlflowClient().get_run(run_id).info.experiment_id,
                           "reason": judged})
    challenger = tracking.resolve_model(f"models:/{name}/{challenger_version.version}")
    challenger_score = score(challenger, paths, metric, params)
    champion_score = None
    if champion_version is not None:
        champion = tracking.resolve_model(f"models:/{name}/{champion_version.version}")
        champion_score = score(champion, paths, metric, params)
    promoted, reason = decide(challenger_score, champion_score, params.promote.min_delta, metric)
    client = MlflowClient()
    tags = {
        "promotion.decision": "promoted" if promoted else "rejected",
        "promotion.metric": metric,
        "promotion.min_delta": str(params.promote.min_delta),
        "promotion.challenger_score": f"{challenger_score:.6f}",
        "promotion.champion_score": "none" if champion_score is None else f"{champion_score:.6f}",
        "promotion.champion_version": "none" if champion_version is None
        else str(champion_version.version),
        "promotion.reason": reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value)
        client.set_tag(challenger.run_id, key, value)
    # the decision is tagged first, so the model cards the move refreshes show it
    if promoted:
        move_champion(client, name, challenger.version, reason=reason, by=BY_PROMOTE)
    else:
        refresh_card(client, name, challenger.version)
    champion_now = challenger.version if promoted else champion_version.version
    message = (f"{tags['promotion.decision']} {name} v{challenger.version}: {reason}; "
               f"@champion is v{champion_now}")
    log.info("%s", message)
    return Summary("promote", message, details={
        "promoted": promoted, "run_id": challenger.run_id,
        "experiment_id": client.get_run(challenger.run_id).info.experiment_id,
        "challenger_version": challenger.version,
        "champion_version": champion_now, "challenger_score": challenger_score,
        "champion_score": champion_score, "metric": metric, "reason": reason})
