"""The monitor stage: is the served model still seeing the pictures it was trained for?

`catsdogs monitor [--log URL] [--model-version V]` reads the last window of the prediction log
(`monitor.window_hours`, at most `monitor.max_rows` rows, of one model version: by default the one
that answered the newest prediction), downloads that version's reference profile from its
training run in MLflow (`monitoring/reference.parquet`, the `monitor.reference_split` rows) and
compares the two with Evidently (`catsdogs.monitoring.drift`). It writes

- the HTML report and a JSON summary to `<data dir>/reports/monitoring/` (one pair per check),
- an MLflow run in the experiment `<mlflow.experiment_name> monitoring`: the drift score and each
  signal's score as metrics, the version as tags, the report as an artifact,
- the scores as Prometheus gauges to the Pushgateway at `$CATSDOGS_PUSHGATEWAY_URL` (skipped, with
  a log line, when unset; a Pushgateway that is down is logged, never fatal),

and its summary says `drift_detected` (the monitoring DAG turns that into the drift Asset event).
A drift event asks for labels: the window's `recent` pictures (the share the service keeps
briefly, `review.recent_share`) join the review queue as `drift` (`catsdogs.monitoring.review.
promote_drift`); the summary's `queued_for_review` says how many.
Fewer than `monitor.min_rows` predictions: a clear skip, nothing compared. The same window and
params as the last check: up to date, nothing redone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from typing import Any

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.settings import MonitoringSettings, load
from catsdogs.storage import atomic_file, fingerprint
from catsdogs.summary import Summary

log = logging.getLogger(__name__)

LOG_URL_ENV = "CATSDOGS_PREDICTION_LOG_URL"
PUSHGATEWAY_ENV = "CATSDOGS_PUSHGATEWAY_URL"
PUSH_JOB = "catsdogs_monitor"
REPORTS = ("reports", "monitoring")
LATEST = "latest.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", default=None, dest="log_url",
                        help=f"prediction log (SQLAlchemy URL; default ${LOG_URL_ENV}, else "
                             "sqlite:///<data dir>/monitoring/predictions.db)")
    parser.add_argument("--model-version", default=None,
                        help="model version to check (default: the one that answered the "
                             "newest prediction in the window)")


def read_window(url: str, params: Params, now: dt.datetime, version: str | None
                ) -> tuple[Any, str | None, int]:
    """The window's rows (newest `max_rows` distinct pictures of one version, oldest first),
    that version, and how many rows repeated a picture of the window (left out:
    `drift.distinct_pictures`)."""
    import sqlalchemy as sa

    from catsdogs.monitoring.drift import distinct_pictures
    from catsdogs.monitoring.prediction_log import read_predictions

    settings = params.monitor
    shown = sa.make_url(url).render_as_string(hide_password=True)
    try:
        frame = read_predictions(url, since=now - dt.timedelta(hours=settings.window_hours),
                                 until=now, model_version=version)
    except (sa.exc.SQLAlchemyError, ImportError, OSError) as exc:
        raise UserError(f"prediction log {shown} unreadable ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}); start its database (or install "
                        f"its driver) or point --log / ${LOG_URL_ENV} at it") from None
    if frame.empty:
        return frame, version, 0
    version = version or str(frame["model_version"].iloc[-1])
    # the newest row of each picture stands for it (the window's most recent traffic)
    newest_first = frame[frame["model_version"] == version].iloc[::-1]
    distinct, duplicates = distinct_pictures(newest_first)
    return (distinct.head(settings.max_rows).iloc[::-1].reset_index(drop=True), version,
            duplicates)


def queue_drifted(url: str, since: dt.datetime, until: dt.datetime, version: str) -> int:
    """Move the drifted window's `recent` pictures into the review queue; how many moved. A
    store that fails here is logged, not fatal: the drift decision stands."""
    import sqlalchemy as sa

    from catsdogs.monitoring.prediction_log import make_engine
    from catsdogs.monitoring.review import promote_drift

    engine = make_engine(url)
    try:
        return promote_drift(engine, since, until, version)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("drift pictures not queued for review (%s: %s)", type(exc).__name__,
                    str(exc).splitlines()[0][:200])
        return 0
    finally:
        engine.dispose()


def reference_rows(run_id: str, version: str, params: Params) -> Any:
    """The version's reference profile rows of `monitor.reference_split` (all splits when that
    split has fewer than `monitor.min_rows` rows)."""
    from mlflow.exceptions import MlflowException

    from catsdogs import tracking
    from catsdogs.monitoring.reference import REFERENCE_ARTIFACT, load_reference

    try:
        frame = load_reference(run_id)
    except (MlflowException, OSError) as exc:
        tracking.raise_if_outage(exc, f"downloading the reference profile of run {run_id}")
        raise UserError(f"model version {version} (run {run_id}) has no reference profile "
                        f"{REFERENCE_ARTIFACT} ({str(exc).splitlines()[0][:200]}): it was "
                        "trained before reference profiles were logged; run `catsdogs train` "
                        "to register a version that has one") from None
    split = params.monitor.reference_split
    if split != "all" and "split" in frame.columns:
        chosen = frame[frame["split"] == split]
        if len(chosen) >= params.monitor.min_rows:
            return chosen.reset_index(drop=True)
        log.warning("reference profile of v%s has %d %s rows (< monitor.min_rows %d): "
                    "comparing with every split", version, len(chosen), split,
                    params.monitor.min_rows)
    return frame


def push_metrics(result: Any, name: str, version: str) -> bool:
    """Push the drift gauges to $CATSDOGS_PUSHGATEWAY_URL (job `catsdogs_monitor`, grouped by
    model name). False, with a log line, when unset or unreachable."""
    url = load(MonitoringSettings).pushgateway_url
    if not url:
        log.info("%s is not set: drift metrics not pushed to a Pushgateway", PUSHGATEWAY_ENV)
        return False
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    labels = {"model_name": name, "model_version": version}
    gauges = {
        "score": Gauge("catsdogs_drift_score", "Share of the deciding drift signals that "
                       "drifted (0..1; width and height are informational)",
                       list(labels), registry=registry),
        "detected": Gauge("catsdogs_drift_detected", "1 when the last check detected drift",
                          list(labels), registry=registry),
        "rows": Gauge("catsdogs_drift_window_rows", "Distinct pictures in the checked window",
                      list(labels), registry=registry),
        "time": Gauge("catsdogs_drift_last_check_timestamp_seconds",
                      "When the last drift check finished (Unix time)", list(labels),
                      registry=registry),
    }
    signal_score = Gauge("catsdogs_drift_signal_score", "Evidently score of one drift signal "
                         "(embedding: method score; columns: p-value)", [*labels, "signal"],
                         registry=registry)
    signal_drifted = Gauge("catsdogs_drift_signal_drifted", "1 when the signal drifted "
                           "(width, height: informational, never part of the decision)",
                           [*labels, "signal"], registry=registry)
    gauges["score"].labels(**labels).set(result.score)
    gauges["detected"].labels(**labels).set(int(result.detected))
    gauges["rows"].labels(**labels).set(result.current_rows)
    gauges["time"].labels(**labels).set_to_current_time()
    for signal in result.signals:
        signal_score.labels(**labels, signal=signal.name).set(signal.score)
        signal_drifted.labels(**labels, signal=signal.name).set(int(signal.drifted))
    try:
        push_to_gateway(url, job=PUSH_JOB, registry=registry, grouping_key={"model_name": name},
                        timeout=10)
    except OSError as exc:
        log.warning("Pushgateway %s unreachable (%s): drift metrics not pushed", url, exc)
        return False
    log.info("drift metrics pushed to %s", url)
    return True


def log_to_mlflow(result: Any, details: dict[str, Any], html: Any, params: Params,
                  paths: DataPaths) -> tuple[str, str]:
    """One run in `<experiment> monitoring`: metrics, tags, the report. (run id, experiment id)."""
    import mlflow

    from catsdogs import tracking

    experiment = tracking.experiment_id(f"{params.mlflow.experiment_name} monitoring", paths)
    tags = {"model_name": details["model_name"], "model_version": details["model_version"],
            "drift.detected": str(result.detected).lower(), **tracking.orchestrator_tags()}
    with mlflow.start_run(experiment_id=experiment, tags=tags,
                          run_name=f"monitor v{details['model_version']} "
                                   f"{details['window_end'][:16]}") as run:
        mlflow.log_params({f"monitor.{k}": v for k, v in params.monitor.model_dump().items()})
        mlflow.log_metrics({"drift.score": result.score, "drift.detected": int(result.detected),
                            "window.rows": result.current_rows,
                            "reference.rows": result.reference_rows,
                            **{f"drift.{s.name}": s.score for s in result.signals}})
        mlflow.log_artifact(str(html), "monitoring")
        mlflow.log_dict(details, "monitoring/drift.json")
    return run.info.run_id, experiment


def run(params: Params, paths: DataPaths, log_url: str | None = None,
        model_version: str | None = None) -> Summary:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from catsdogs import tracking
    from catsdogs.monitoring.drift import compare
    from catsdogs.monitoring.prediction_log import log_url as resolve_log_url

    settings, name = params.monitor, params.mlflow.registered_model_name
    now = dt.datetime.now(dt.UTC)
    url = resolve_log_url(paths.root, log_url)
    frame, version, duplicates = read_window(url, params, now, model_version)
    if len(frame) < settings.min_rows:
        which = f"model version {version}" if version else "any model version"
        return Summary("monitor", f"not enough predictions to check drift: {len(frame)} "
                       f"distinct pictures of {which} in the last {settings.window_hours:g} h "
                       f"(monitor.min_rows = {settings.min_rows}; {duplicates} repeats left "
                       "out); nothing compared", skipped=True, details={
                           "drift_detected": False, "reason": "not_enough_rows",
                           "rows": len(frame), "duplicate_rows": duplicates,
                           "model_version": version})
    reports = paths.root.joinpath(*REPORTS)
    stamp = fingerprint(name, version, len(frame), str(frame["time"].iloc[0]),
                        str(frame["time"].iloc[-1]), params.fingerprint("monitor"))
    latest = reports / LATEST
    if latest.exists():
        earlier = json.loads(latest.read_text())
        if earlier.get("stamp") == stamp:
            return Summary("monitor", f"{name} v{version}: this window was already checked "
                           f"(drift score {earlier['drift_score']:.3f})", skipped=True,
                           details=earlier)
    tracking.connect(paths, create=False)   # the version's training run must be there
    try:
        run_id = MlflowClient().get_model_version(name, version).run_id
    except MlflowException as exc:
        tracking.raise_if_outage(exc, f"looking up {name} v{version}")
        raise UserError(f"the prediction log names {name} v{version}, which the registry does "
                        "not have; check --model-version or the MLflow server the stage uses") from None
    result = compare(reference_rows(run_id, version, params), frame, settings)
    moment = now.strftime("%Y%m%dT%H%M%SZ")
    html = result.save_html(reports / f"drift-{moment}-v{version}.html.tmp")
    html = html.rename(html.with_suffix(""))
    details = {"drift_detected": result.detected, "drift_score": result.score,
               "model_name": name, "model_version": version, "training_run_id": run_id,
               "rows": result.current_rows, "reference_rows": result.reference_rows,
               "duplicate_rows": duplicates + result.duplicate_rows,
               "window_start": str(frame["time"].iloc[0]), "window_end": str(frame["time"].iloc[-1]),
               "signals": {s.name: {"score": s.score, "drifted": s.drifted, "method": s.method,
                                    "threshold": s.threshold, "informational": s.informational}
                           for s in result.signals},
               "report": str(html), "stamp": stamp}
    details["run_id"], details["experiment_id"] = log_to_mlflow(result, details, html, params,
                                                                paths)
    details["pushed"] = push_metrics(result, name, version)
    details["queued_for_review"] = (queue_drifted(url, now - dt.timedelta(
        hours=settings.window_hours), now, version) if result.detected else 0)
    with atomic_file(reports / f"drift-{moment}-v{version}.json") as tmp:
        tmp.write_text(json.dumps(details, indent=2))
    with atomic_file(latest) as tmp:
        tmp.write_text(json.dumps(details, indent=2))
    drifted = [s.name for s in result.signals if s.drifted and not s.informational]
    moved = [s.name for s in result.signals if s.drifted and s.informational]
    verdict = (f"DRIFT detected (score {result.score:.3f}; drifted: {', '.join(drifted)})"
               if result.detected else f"no drift (score {result.score:.3f})") + (
        f"; informational only: {', '.join(moved)} moved" if moved else "")
    if result.detected:
        verdict += f"; {details['queued_for_review']} pictures of the window queued for review"
    return Summary("monitor", f"{name} v{version}, {result.current_rows} predictions vs "
                   f"{result.reference_rows} reference rows: {verdict}", details=details)
