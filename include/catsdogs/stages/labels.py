"""The labels stage: are there enough new labels to retrain on?

`catsdogs labels [--log URL]` counts the labelled production pictures (prediction-log rows with
a kept `picture` and a `true_label`) labelled after ingest last read the log
(`<data dir>/feedback/synced.json`, written by `catsdogs ingest`; all of them when it never did)
and compares the count with `feedback.retrain_labels`. Its summary says `enough`, which the
catsdogs_monitoring DAG turns into the labelled-data Asset event that starts catsdogs_training
(`catsdogs.orchestration.monitoring.labels_event`). It pushes `catsdogs_labels_waiting` (that
count) and `catsdogs_labels_needed` (`feedback.retrain_labels`) to the Pushgateway (job
`catsdogs_labels`; skipped, with a log line, when `$CATSDOGS_PUSHGATEWAY_URL` is unset or the
gateway is down): with drift detected and too few labels, `CatsdogsLabelsNeeded` fires.
"""

from __future__ import annotations

import argparse
import logging

from catsdogs.config import Params
from catsdogs.data import feedback
from catsdogs.monitoring.prediction_log import log_url as resolve_log_url
from catsdogs.paths import DataPaths
from catsdogs.settings import MonitoringSettings, load
from catsdogs.stages.monitor import LOG_URL_ENV, PUSHGATEWAY_ENV
from catsdogs.summary import Summary

log = logging.getLogger(__name__)

PUSH_JOB = "catsdogs_labels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", default=None, dest="log_url",
                        help=f"prediction log (SQLAlchemy URL; default ${LOG_URL_ENV}, else "
                             "sqlite:///<data dir>/monitoring/predictions.db)")


def push_metrics(waiting: int, needed: int) -> bool:
    """Push the two gauges to $CATSDOGS_PUSHGATEWAY_URL (job `catsdogs_labels`). False, with a
    log line, when unset or unreachable."""
    url = load(MonitoringSettings).pushgateway_url
    if not url:
        log.info("%s is not set: label metrics not pushed to a Pushgateway", PUSHGATEWAY_ENV)
        return False
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    Gauge("catsdogs_labels_waiting", "Labelled production pictures no training run has "
          "ingested yet", registry=registry).set(waiting)
    Gauge("catsdogs_labels_needed", "New labels that start a training run "
          "(feedback.retrain_labels)", registry=registry).set(needed)
    try:
        push_to_gateway(url, job=PUSH_JOB, registry=registry, timeout=10)
    except OSError as exc:
        log.warning("Pushgateway %s unreachable (%s): label metrics not pushed", url, exc)
        return False
    return True


def run(params: Params, paths: DataPaths, log_url: str | None = None) -> Summary:
    """Count the labels newer than the last ingest; `enough` when they reach
    `feedback.retrain_labels`. Raises `sqlalchemy.exc.OperationalError` when the log cannot be
    reached (the task fails and is retried)."""
    from catsdogs.monitoring.prediction_log import count_labelled

    since = feedback.read_at(paths.feedback)
    waiting = count_labelled(resolve_log_url(paths.root, log_url), since)
    needed = params.feedback.retrain_labels
    enough = waiting >= needed
    pushed = push_metrics(waiting, needed)
    after = f"since the last ingest ({since.isoformat()})" if since else "(never ingested)"
    verdict = ("enough to retrain" if enough
               else f"{needed - waiting} more needed to retrain (feedback.retrain_labels)")
    return Summary("labels", f"{waiting} new labelled production pictures {after}: {verdict}",
                   details={"new_labels": waiting, "needed": needed, "enough": enough,
                            "since": since.isoformat() if since else None, "pushed": pushed})
