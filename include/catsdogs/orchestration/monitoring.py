"""The drift → retraining link: the `catsdogs_monitoring` DAG's schedule, the drift Asset, and
the decision to emit a drift event (with a cool-down).

- `DRIFT_ASSET` (`catsdogs://monitoring/drift`): the monitoring DAG's `drift_event` task announces
  it when the `monitor` stage detected drift; `catsdogs_training` is scheduled on
  `AssetOrTimeSchedule(nightly cron, DRIFT_ASSET)`, so drift starts a training run at once.
- Cool-down: no drift event within `monitor.cooldown_hours` of the last one (read from the
  asset's own event history, `inlet_events`), so a drifting week retrains once per cool-down
  rather than every hour. Every drift event starts a training run, so this is also the time since
  the last drift-triggered training.

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


def cooldown_hours(settings: RunnerSettings) -> float:
    """$CATSDOGS_DRIFT_COOLDOWN_HOURS, else `monitor.cooldown_hours` of params.yaml."""
    if settings.drift_cooldown_hours is not None:
        return settings.drift_cooldown_hours
    return default_params().monitor.cooldown_hours


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
