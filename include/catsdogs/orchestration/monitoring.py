"""The monitoring → retraining link: the `catsdogs_monitoring` DAG's schedule, its two Assets,
and the decisions to emit their events.

- `DRIFT_ASSET` (`catsdogs://monitoring/drift`): the monitoring DAG's `drift_event` task announces
  it when the `monitor` stage detected drift. Drift alone does not retrain (retraining on the
  same pictures cannot fix what users now send): the event asks for labels; while too few exist
  the `CatsdogsLabelsNeeded` alert says so.
- `LABELLED_ASSET` (`catsdogs://feedback/labelled`): the `labels_event` task announces it when the
  `labels` stage counts at least `feedback.retrain_labels` labelled production pictures newer
  than the last ingest; `catsdogs_training` is scheduled on
  `AssetOrTimeSchedule(nightly cron, LABELLED_ASSET)`, and its ingest merges them.
- Cool-down: no drift event within `monitor.cooldown_hours` of the last one (read from the
  asset's own event history, `inlet_events`), so a drifting week alerts once per cool-down
  rather than every hour; no labelled-data event while the last one is newer than the last
  ingest (its training run has not merged the labels yet).

Only imported by `dags/`; nothing heavy is imported here.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowSkipException

from catsdogs.orchestration.runners.common import default_params
from catsdogs.settings import RunnerSettings

log = logging.getLogger(__name__)

DRIFT_ASSET = Asset(name="catsdogs_drift", uri="catsdogs://monitoring/drift",
                    group="monitoring")
LABELLED_ASSET = Asset(name="catsdogs_labelled_data", uri="catsdogs://feedback/labelled",
                       group="monitoring")


def cooldown_hours(settings: RunnerSettings, overrides: Sequence[str] = ()) -> float:
    """The cool-down in hours: the run's `monitor.cooldown_hours=` override (its trigger form's
    `overrides`, as the monitor stage gets them), else $CATSDOGS_DRIFT_COOLDOWN_HOURS, else
    `monitor.cooldown_hours` of params.yaml. A malformed override raises UserError."""
    named = any(o.partition("=")[0].strip() == "monitor.cooldown_hours" for o in overrides)
    if settings.drift_cooldown_hours is not None and not named:
        return settings.drift_cooldown_hours
    return default_params(tuple(overrides)).monitor.cooldown_hours


def drift_event(summary: Mapping[str, Any] | None, earlier: Sequence[Any], outlet: Any,
                cooldown: float, now: dt.datetime | None = None) -> dict[str, Any]:
    """Decide whether this monitoring run announces DRIFT_ASSET.

    `summary`: the monitor stage's summary (XCom); `earlier`: the asset's past events (each with
    a `timestamp`, oldest first); `outlet`: this task's outlet event accessor (its `extra` is
    filled). Returns the event's extra; raises AirflowSkipException (no event) when there is no
    drift, not enough rows, or the last event is younger than `cooldown` hours."""
    if not summary or not summary.get("drift_detected"):
        reason = (summary or {}).get("message", "the monitor stage returned no summary")
        raise AirflowSkipException(f"no drift event: {reason}")
    now = now or dt.datetime.now(dt.UTC)
    if earlier:
        last = earlier[-1].timestamp
        age_h = (now - last).total_seconds() / 3600
        if age_h < cooldown:
            raise AirflowSkipException(
                f"drift detected (score {summary.get('drift_score', 0):.3f}) but the last drift "
                f"event was {age_h:.1f} h ago, within the {cooldown:g} h cool-down "
                f"(monitor.cooldown_hours): no new retraining trigger")
    extra = {"drift_score": summary.get("drift_score"),
             "model_version": summary.get("model_version"),
             "rows": summary.get("rows"), "report": summary.get("report"),
             "mlflow_run_id": summary.get("run_id"),
             "queued_for_review": summary.get("queued_for_review")}
    outlet.extra = extra
    log.info("drift event: %s", extra)
    return extra


def labels_event(summary: Mapping[str, Any] | None, earlier: Sequence[Any],
                 outlet: Any) -> dict[str, Any]:
    """Decide whether this monitoring run announces LABELLED_ASSET (which starts
    catsdogs_training).

    `summary`: the labels stage's summary (XCom); `earlier`: the asset's past events (each with
    a `timestamp`, oldest first); `outlet`: this task's outlet event accessor. Returns the
    event's extra; raises AirflowSkipException (no event) when fewer new labels than
    `feedback.retrain_labels` exist, or when an event was announced after the last ingest read
    the labels (`since`): that training run has not ingested them yet, one run is enough."""
    if not summary or not summary.get("enough"):
        reason = (summary or {}).get("message", "the labels stage returned no summary")
        raise AirflowSkipException(f"no labelled-data event: {reason}")
    since = summary.get("since")
    if earlier and (since is None or earlier[-1].timestamp > dt.datetime.fromisoformat(since)):
        raise AirflowSkipException(
            f"{summary['new_labels']} new labels, but a labelled-data event "
            f"({earlier[-1].timestamp.isoformat()}) is newer than the last ingest: the training "
            "run it started has not merged them yet")
    extra = {"new_labels": summary.get("new_labels"), "needed": summary.get("needed"),
             "since": since}
    outlet.extra = extra
    log.info("labelled-data event: %s", extra)
    return extra
