"""The promote stage: move alias `champion` to the `challenger` only if it scores better.

Both models are scored by the same code on the same current test split (the champion is
re-evaluated there), by `promote.metric`; the challenger must beat the champion by more than
`promote.min_delta`. Two yardsticks when the recent-production test set
(`transformed/production_test/`: labelled production pictures held out by content hash, never
trained on; `catsdogs.data.feedback`) holds at least `feedback.min_holdout` pictures: both models
are scored there too, and the challenger must not regress on either set and must beat the
champion by more than `min_delta` on at least one (`decide`). With fewer, the summary says so and
the fixed split alone decides. The decision, the scores and the reason become tags on the
challenger's model version and its run, and its model card shows them. A worse model is never
promoted.

An MLflow server lost mid-way (`catsdogs.tracking.talking_to_mlflow`) ends the stage with one
line naming the step; the next run repairs what was left: the decision tag on the version is
written last (the other tags first, then the run's decision), so a version without it is judged
again from scratch and all tags rewritten; a promoted challenger whose alias did not move yet is
judged again too (only a *rejected* decision is final); an alias that moved without its move
record gets the record (`history.record_missing_move`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.registry.names import (
    BY_PROMOTE,
    CHALLENGER,
    CHAMPION,
    PROMOTED,
    PROMOTION_CHALLENGER_SCORE_TAG,
    PROMOTION_CHAMPION_SCORE_TAG,
    PROMOTION_CHAMPION_VERSION_TAG,
    PROMOTION_DECISION_TAG,
    PROMOTION_METRIC_TAG,
    PROMOTION_MIN_DELTA_TAG,
    PROMOTION_PRODUCTION_CHALLENGER_TAG,
    PROMOTION_PRODUCTION_CHAMPION_TAG,
    PROMOTION_PRODUCTION_PICTURES_TAG,
    PROMOTION_REASON_TAG,
    REJECTED,
)
from catsdogs.summary import Summary

if TYPE_CHECKING:
    from catsdogs.registry.record import VersionRecord

log = logging.getLogger(__name__)


def score(record: VersionRecord, paths: DataPaths, metric: str, params: Params,
          split: str = "test") -> float:
    """`metric` of a registered model version on transformed/<split> (preprocessed at its own
    size)."""
    from catsdogs.inference.compute import Compute, pick_device
    from catsdogs.registry.record import load_model
    from catsdogs.training.loading import ImageFolderDataset, make_loader
    from catsdogs.training.loop import predict
    from catsdogs.training.metrics import classification_metrics
    from catsdogs.training.model import eval_transform

    device = pick_device()
    compute = Compute.resolve(params.train.precision, device)
    model = load_model(record, device)
    loader = make_loader(ImageFolderDataset(paths.split_dir(split),
                                            eval_transform(record.image_size)),
                         params.train.batch_size, shuffle=False, seed=0,
                         num_workers=params.train.num_workers, device=device)
    labels, probs = predict(model, loader, compute)
    return classification_metrics(labels, probs)[metric]


def decide(challenger: float, champion: float | None, min_delta: float, metric: str,
           production: tuple[float, float] | None = None) -> tuple[bool, str]:
    """(promote?, reason). No champion yet: promote. One yardstick (`production` None): only a
    gain above min_delta on the fixed test split. Two (`production`: the challenger's and the
    champion's score on the recent-production test set): no regression on either (a drop below
    the champion's score; with a negative min_delta, a drop larger than |min_delta|) and a gain
    above min_delta on at least one."""
    if champion is None:
        return True, "no champion yet"
    if production is None:
        if challenger > champion + min_delta:
            return True, (f"challenger {metric} {challenger:.4f} beats champion {champion:.4f} "
                          f"by more than {min_delta}")
        return False, (f"challenger {metric} {challenger:.4f} does not beat champion "
                       f"{champion:.4f} by more than {min_delta}")
    sets = {"the fixed test split": (challenger, champion), "recent production": production}
    scores = "; ".join(f"{where}: {ours:.4f} vs champion {theirs:.4f}"
                       for where, (ours, theirs) in sets.items())
    regressed = [where for where, (ours, theirs) in sets.items()
                 if ours < theirs + min(0.0, min_delta)]
    if regressed:
        return False, f"challenger {metric} regresses on {' and '.join(regressed)} ({scores})"
    gained = [where for where, (ours, theirs) in sets.items() if ours > theirs + min_delta]
    if not gained:
        return False, (f"challenger {metric} beats the champion by more than {min_delta} on "
                       f"neither set ({scores})")
    return True, (f"challenger {metric} beats the champion by more than {min_delta} on "
                  f"{' and '.join(gained)} and regresses on neither ({scores})")


def production_pictures(paths: DataPaths) -> int:
    """Pictures in the recent-production test set (`transformed/production_test/<class>/`)."""
    from catsdogs.data.feedback import HELD_OUT
    from catsdogs.data.lineage import count_pictures

    return sum(sum(per_class.values())
               for per_class in count_pictures(paths.transformed, (HELD_OUT,)).values())


def _earlier_decision(challenger: VersionRecord, champion: VersionRecord | None,
                      params: Params, pictures: int) -> str | None:
    """Why there is nothing to decide (the stage is up to date), or None: the challenger is the
    champion, or it was already rejected against this champion with this metric and margin and
    the same number of recent-production test pictures (a version's training data are fixed, so
    the same comparison gives the same answer; a grown production set is a new question)."""
    if champion is None:
        return None
    if champion.version == challenger.version:
        return "is already the champion"
    tags = challenger.tags
    if (tags.get(PROMOTION_DECISION_TAG) == REJECTED
            and tags.get(PROMOTION_CHAMPION_VERSION_TAG) == champion.version
            and tags.get(PROMOTION_METRIC_TAG) == params.promote.metric
            and tags.get(PROMOTION_MIN_DELTA_TAG) == str(params.promote.min_delta)
            and tags.get(PROMOTION_PRODUCTION_PICTURES_TAG) == str(pictures)):
        return (f"was already rejected against champion v{champion.version}: "
                f"{tags.get(PROMOTION_REASON_TAG, '')}")
    return None


def _write_decision(client: Any, name: str, challenger: VersionRecord,
                    tags: dict[str, str]) -> None:
    """The decision's tags on the run, then on the version, the version's decision tag last: it
    is what `_earlier_decision` reads, so it exists only when every other tag was written."""
    others = {k: v for k, v in tags.items() if k != PROMOTION_DECISION_TAG}
    for key, value in {**others, PROMOTION_DECISION_TAG: tags[PROMOTION_DECISION_TAG]}.items():
        client.set_tag(challenger.run_id, key, value)
    for key, value in others.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    client.set_model_version_tag(name, challenger.version,
                                 PROMOTION_DECISION_TAG, tags[PROMOTION_DECISION_TAG])


def run(params: Params, paths: DataPaths) -> Summary:
    """Judge `@challenger` against `@champion`, each resolved once: the scores, the tags and the
    move all concern those two versions, even when an alias moves meanwhile."""
    from mlflow import MlflowClient

    from catsdogs import tracking
    from catsdogs.registry.history import move_champion, record_missing_move
    from catsdogs.registry.model_card import refresh_card
    from catsdogs.registry.record import find

    if not paths.split_dir("test").is_dir():
        raise UserError(f"test split missing at {paths.split_dir('test')}; run `catsdogs "
                        "transform` first")
    tracking.connect(paths)
    client = MlflowClient()
    name, metric = params.mlflow.registered_model_name, params.promote.metric
    with tracking.talking_to_mlflow(f"reading {name}@{CHALLENGER} and @{CHAMPION}"):
        challenger = find(client, name, CHALLENGER)
        if challenger is None:
            raise UserError(f"no {name}@{CHALLENGER} in the registry; run `catsdogs train` first")
        champion = find(client, name, CHAMPION)
    pictures = production_pictures(paths)
    judged = _earlier_decision(challenger, champion, params, pictures)
    if judged is not None:
        run_id = challenger.run_id
        if champion is not None and champion.version == challenger.version:
            with tracking.talking_to_mlflow(f"recording the move to v{challenger.version}"):
                earlier = challenger.tags.get(PROMOTION_CHAMPION_VERSION_TAG)
                record_missing_move(client, name, challenger.version,
                                    None if earlier in (None, "none") else earlier,
                                    reason=challenger.tags.get(PROMOTION_REASON_TAG, "promoted"),
                                    by=BY_PROMOTE)
        return Summary("promote", f"{name} v{challenger.version} {judged}",
                       skipped=True, details={
                           "version": challenger.version, "promoted": False,
                           "champion_version": champion.version if champion else None,
                           "run_id": run_id,
                           "experiment_id": client.get_run(run_id).info.experiment_id,
                           "reason": judged})
    from catsdogs.data.feedback import HELD_OUT

    with tracking.talking_to_mlflow(f"scoring challenger v{challenger.version}"):
        challenger_score = score(challenger, paths, metric, params)
    with tracking.talking_to_mlflow(f"scoring champion v{champion.version if champion else ''}"):
        champion_score = None if champion is None else score(champion, paths, metric, params)
    production: tuple[float, float] | None = None
    if champion is not None and pictures >= params.feedback.min_holdout:
        with tracking.talking_to_mlflow("scoring both on the recent-production test set"):
            production = (score(challenger, paths, metric, params, HELD_OUT),
                          score(champion, paths, metric, params, HELD_OUT))
    yardstick = ("judged on the fixed test split and on recent production" if production
                 else "no champion to compare on recent production" if champion is None
                 else f"recent-production test set: {pictures} pictures, fewer than "
                      f"feedback.min_holdout={params.feedback.min_holdout}: judged on the fixed "
                      "test split alone")
    promoted, reason = decide(challenger_score, champion_score, params.promote.min_delta, metric,
                              production)
    tags = {
        PROMOTION_DECISION_TAG: PROMOTED if promoted else REJECTED,
        PROMOTION_METRIC_TAG: metric,
        PROMOTION_MIN_DELTA_TAG: str(params.promote.min_delta),
        PROMOTION_CHALLENGER_SCORE_TAG: f"{challenger_score:.6f}",
        PROMOTION_CHAMPION_SCORE_TAG: "none" if champion_score is None
        else f"{champion_score:.6f}",
        PROMOTION_CHAMPION_VERSION_TAG: "none" if champion is None else champion.version,
        PROMOTION_REASON_TAG: reason,
        PROMOTION_PRODUCTION_PICTURES_TAG: str(pictures),
        PROMOTION_PRODUCTION_CHALLENGER_TAG: "none" if production is None
        else f"{production[0]:.6f}",
        PROMOTION_PRODUCTION_CHAMPION_TAG: "none" if production is None
        else f"{production[1]:.6f}",
    }
    with tracking.talking_to_mlflow(f"tagging the decision on v{challenger.version}"):
        _write_decision(client, name, challenger, tags)
    # the decision is tagged first, so the model cards the move refreshes show it
    with tracking.talking_to_mlflow(f"moving @{CHAMPION} to v{challenger.version}" if promoted
                                    else f"refreshing the model card of v{challenger.version}"):
        if promoted:
            move_champion(client, name, challenger.version, reason=reason, by=BY_PROMOTE)
        else:
            refresh_card(client, name, challenger.version)
    champion_now = challenger.version if promoted else champion.version
    message = (f"{tags[PROMOTION_DECISION_TAG]} {name} v{challenger.version}: {reason}; "
               f"@champion is v{champion_now} ({yardstick})")
    log.info("%s", message)
    return Summary("promote", message, details={
        "promoted": promoted, "run_id": challenger.run_id,
        "experiment_id": client.get_run(challenger.run_id).info.experiment_id,
        "challenger_version": challenger.version,
        "champion_version": champion_now, "challenger_score": challenger_score,
        "champion_score": champion_score, "metric": metric, "reason": reason,
        "production": {"pictures": pictures, "judged": production is not None,
                       "challenger_score": None if production is None else production[0],
                       "champion_score": None if production is None else production[1],
                       "note": yardstick}})
