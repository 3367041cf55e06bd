"""MLflow tracking: where the tracking server is, the experiment, logging runs, the UI's links.

The model registry (versions, aliases, their tags, the model card) is `catsdogs.registry`.

`MLFLOW_TRACKING_URI` decides the server; unset, an embedded SQLite store in `<data dir>/mlflow/`
is used so a lone CLI run needs no server. A remote server is probed before any work starts, so a
down server fails the stage in seconds (Airflow retries it) instead of after training.

A server that stops answering later, in the middle of an operation, is bounded by
`CATSDOGS_MLFLOW_TIMEOUT_S` (`TrackingSettings.mlflow_timeout_s`, default 60 s): `connect` sets
MLflow's own HTTP retry and timeout variables from it (`http_budget`), so no request waits
longer, and `talking_to_mlflow(what)` turns the connection failure MLflow then raises (an
`MlflowException` wrapping a requests/urllib3 error, or that error itself) into one line,
`MlflowUnavailable` (a UserError): "MLflow server <uri> stopped answering while <what> (<cause>)".
The stages wrap their MLflow steps in it; the CLI and the Bento import wrap the whole command as a
fallback (then <what> is the command). Code that reads "not found" from an `MlflowException`
(`registry.record.find`, `resolve`, ...) calls `raise_if_outage` first, so a down server is never
diagnosed as a missing model. Once an outage was seen, the process's later MLflow calls (MLflow's
run clean-up on the way out) fail fast instead of waiting out the bound again.

The embedded store (`<data dir>/mlflow/`: `mlflow.db`, `artifacts/`, `store.json`, `.lock`):

- Commands that only read it (or need what an earlier stage wrote: `evaluate`, `champion`, the
  Bento import, `monitor`) connect with `create=False`: a store that does not exist is a
  UserError naming the path looked at, and nothing is created.
- MLflow creates and migrates the schema the first time a store object opens the file; several
  processes doing that at once on a fresh data dir race (`duplicate column name`) and can leave a
  broken store. `connect` opens both stores (tracking and model registry) while it holds an
  exclusive `flock` on `mlflow/.lock`, so any number of commands may start at once.
- MLflow records absolute `file://` artifact locations (experiments, runs, model versions, logged
  models) and has no feature that relocates a store. So the store's folder is recorded in
  `store.json` (for a store made before that file, inferred from the project experiment's
  artifact location, which `experiment_id` puts under `mlflow/artifacts`); when the data dir was
  moved or copied, `connect` rewrites the locations under the old folder to the new one in one
  transaction, under the same lock. Our code rather than a library's: it is about MLflow's
  private schema (only the columns that exist are touched). A copy then writes its artefacts
  into its own folder, never into the original's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from catsdogs.errors import MlflowUnavailable, UserError
from catsdogs.paths import DATA_DIR_ENV, DataPaths
from catsdogs.settings import TrackingSettings, load
from catsdogs.storage import is_stamp

log = logging.getLogger(__name__)

HTTP_RETRIES = 2          # MLflow's retries of one request (3 tries) within the bound
HTTP_BACKOFF_S = 1        # urllib3 sleeps 0, then 2 * this between the tries
HTTP_JITTER_S = 0.5       # plus up to this at random
# what MLflow's messages say when the server does not answer (its own wrapping of requests'
# errors carries no `__cause__`, and artefact downloads join several failures into one message)
OUTAGE_MARKERS = ("Max retries exceeded", "Failed to establish a new connection",
                  "Connection refused", "Connection aborted", "RemoteDisconnected",
                  "Read timed out", "failed with timeout exception", "Connection reset")
_server: str | None = None   # the http(s) tracking URI `connect` pointed MLflow at
# the embedded store's URI `connect` last gave MLflow: `mlflow.set_tracking_uri` exports it as
# $MLFLOW_TRACKING_URI (for subprocesses), which must not read as the user's choice when this
# process later opens another data dir
_embedded: str | None = None

TRACKING_ENV = "MLFLOW_TRACKING_URI"
PROBE_TIMEOUT_S = 5.0
# MLflow 3.17's UI shows every page in its global "GenAI" mode (a traces overview for an
# experiment) unless the URL says `workflowType=machine_learning` (or the browser remembers the
# "Model training" switch). The experiment kind tag is what the UI uses when that switch is off.
UI_QUERY = "?workflowType=machine_learning"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
STORE_DB = "mlflow.db"            # the embedded store's SQLite file in <data dir>/mlflow/
STORE_MARK = "store.json"         # {"mlflow_dir": the absolute folder the store's locations use}
STORE_LOCK = ".lock"              # flock-ed while the store is opened, migrated or relocated
ARTIFACTS = "artifacts"
# MLflow 3.17 columns holding absolute artefact URIs (a column a version lacks is skipped)
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("model_versions", "source"), ("model_versions", "storage_location"),
                    ("logged_models", "artifact_location"))


def tracking_uri(paths: DataPaths, settings: TrackingSettings | None = None) -> str:
    """`$MLFLOW_TRACKING_URI`, else the embedded SQLite store in the data dir."""
    if settings is None:
        _forget_own_export()
        settings = load(TrackingSettings)
    return settings.mlflow_tracking_uri or f"sqlite:///{paths.mlflow_dir / STORE_DB}"


def shown_uri(uri: str) -> str:
    """`uri` as messages and summaries may show it: any user and password in it replaced by
    `***` (`https://***@mlflow.example.com`)."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def connect(paths: DataPaths, create: bool = True) -> str:
    """Point MLflow at the tracking store and return its URI (`shown_uri` it before showing it).

    A server that does not answer is a UserError now. The embedded store (no
    `$MLFLOW_TRACKING_URI`) is opened under its lock, created when absent and relocated when its
    data dir moved (module docstring). `create=False`, for commands that only read what earlier
    stages wrote: a SQLite store file that does not exist is a UserError naming the path and the
    fix, and nothing is created.
    """
    import mlflow

    _forget_own_export()
    settings = load(TrackingSettings)
    uri = tracking_uri(paths, settings)
    # MLflow prints a "View experiment" link that opens the GenAI page; the stages log their own
    # links (`experiment_url`, `run_url`)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    global _server
    if uri.startswith(("http://", "https://")):
        _probe(uri)
        os.environ.update(http_budget(settings.mlflow_timeout_s))
        _server = uri
    else:
        _server = None
    if not create and uri.startswith("sqlite:///"):
        _require_file(Path(uri[len("sqlite:///"):]), paths)
    global _embedded
    if not settings.mlflow_tracking_uri:
        _open_embedded(paths, uri)
        _embedded = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _forget_own_export() -> None:
    """Unset `$MLFLOW_TRACKING_URI` where it is only MLflow's export of the embedded store
    `connect` chose (a second data dir in one process: a benchmark, a test, a notebook, would
    otherwise write to the first one's store)."""
    if _embedded is not None and os.environ.get(TRACKING_ENV) == _embedded:
        del os.environ[TRACKING_ENV]


def _require_file(db: Path, paths: DataPaths) -> None:
    if db.is_file():
        return
    raise UserError(
        f"no MLflow store at {db} (this command only reads one and creates none): point "
        f"{TRACKING_ENV} at the tracking server the pipeline used, or give the data dir it wrote "
        f"(--data-dir or ${DATA_DIR_ENV}; now {paths.root}), or run the pipeline first "
        "(`catsdogs train`)")


@contextlib.contextmanager
def _store_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on `folder/.lock` (other processes wait; released on exit or
    death)."""
    fd = os.open(folder / STORE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_embedded(paths: DataPaths, uri: str) -> None:
    """Under the store's lock: relocate its artefact locations when the data dir moved, create
    or migrate both MLflow stores (later opens find them ready), record the store's folder."""
    from mlflow import MlflowClient

    folder = paths.mlflow_dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with _store_lock(folder):
        db = folder / STORE_DB
        if db.is_file():
            try:
                _relocate(db, folder)
            except sqlite3.Error as exc:
                raise UserError(f"the embedded MLflow store {db} cannot be read ({exc}); "
                                "restore it from a backup, or move it away to start an empty "
                                "one") from None
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)        # opens (creates) the tracking store
        client.search_registered_models(max_results=1)  # and the model registry's
        if _recorded_folder(folder) != str(folder):
            (folder / STORE_MARK).write_text(json.dumps({"mlflow_dir": str(folder)}) + "\n")


def _recorded_folder(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / STORE_MARK).read_text())["mlflow_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _relocate(db: Path, folder: Path) -> None:
    """Rewrite the `file://` artefact locations under the folder the store was made in to
    `folder`, in one transaction; nothing when it was made here (or holds no such location)."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection, connection:
        tables = {name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}   # raises for a non-database
        old = _recorded_folder(folder) or (_inferred_folder(connection)
                                           if "experiments" in tables else None)
        if old is None or Path(old) == folder:
            return
        old_uri, new_uri = Path(old).as_uri(), folder.as_uri()
        changed = 0
        for table, column in LOCATION_COLUMNS:
            if table not in tables or column not in {
                    row[1] for row in connection.execute(f"PRAGMA table_info({table})")}:
                continue
            changed += connection.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                (new_uri, len(old_uri) + 1, old_uri, len(old_uri) + 1, old_uri + "/")).rowcount
    log.info("the embedded MLflow store was made in %s and is now in %s (data dir moved or "
             "copied): %d artefact locations now point under %s", old, folder, changed, folder)


def _inferred_folder(connection: sqlite3.Connection) -> str | None:
    """The store's folder as the project experiment's artefact location (`<folder>/artifacts`,
    set by `experiment_id`) says, for a store made before `store.json` was written."""
    suffix = f"/{ARTIFACTS}"
    for (location,) in connection.execute(
            "SELECT artifact_location FROM experiments WHERE artifact_location LIKE 'file://%' "
            "ORDER BY experiment_id"):
        if location.endswith(f"/mlflow{suffix}"):
            return urllib.request.url2pathname(urllib.parse.urlsplit(location[:-len(suffix)]).path)
    return None


def _probe(uri: str) -> None:
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise UserError(
        f"MLflow tracking server {uri} is not reachable ({problem} from {health}). Start it "
        f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or point {TRACKING_ENV} at a "
        f"running one; unset {TRACKING_ENV} to use the embedded SQLite store in the data dir."
    )


def ui_base_url() -> str | None:
    """The MLflow UI's base URL: `$CATSDOGS_MLFLOW_UI_URL`, else an http(s) `$MLFLOW_TRACKING_URI`;
    None for a local store (no UI)."""
    settings = load(TrackingSettings)
    base = settings.mlflow_ui_url or settings.mlflow_tracking_uri
    return base.rstrip("/") if base.startswith(("http://", "https://")) else None


def experiment_url(base: str, experiment: str) -> str:
    """The MLflow UI's runs table of an experiment (not the GenAI traces overview)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs{UI_QUERY}"


def run_url(base: str, experiment: str, run_id: str) -> str:
    """The MLflow UI page of a run, in the UI's machine-learning mode (the UI's `#/runs/<id>`
    redirect drops the mode, so the experiment id is needed)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}{UI_QUERY}"


def orchestrator_tags() -> dict[str, str]:
    """Tags that link a run back to the Airflow DAG run that started it (empty outside Airflow):
    `airflow.dag_id`, `airflow.dag_run_id`, `airflow.run_url`, and the run's description
    (`mlflow.note.content`, shown as Markdown in the MLflow UI) with a link to that page."""
    settings = load(TrackingSettings)
    dag_id, run_id = settings.airflow_ctx_dag_id, settings.airflow_ctx_dag_run_id
    if not dag_id or not run_id:
        return {}
    tags = {"airflow.dag_id": dag_id, "airflow.dag_run_id": run_id}
    url = settings.airflow_run_url
    if url:
        tags["airflow.run_url"] = url
        tags["mlflow.note.content"] = f"Started by Airflow DAG run [{dag_id} / {run_id}]({url})."
    return tags


def experiment_id(name: str, paths: DataPaths) -> str:
    """The experiment's id, creating it (artefacts in the data dir for the embedded store).

    The experiment is tagged as a machine-learning one (`EXPERIMENT_KIND`), also when it already
    exists without a kind, so MLflow's "View experiment" link opens the runs table.
    """
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in found.tags:
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG,
                                                     EXPERIMENT_KIND)
        return found.experiment_id
    location = None
    if not tracking_uri(paths).startswith(("http://", "https://")):
        location = (paths.mlflow_dir / ARTIFACTS).as_uri()
    return mlflow.create_experiment(name, artifact_location=location,
                                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def log_folder(folder: Path, artifact_path: str) -> int:
    """Log the files under `folder` as artefacts under `artifact_path`, leaving out the stages'
    internal stamp files. Returns how many files were logged."""
    import mlflow

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not is_stamp(p))
    for path in files:
        parent = path.parent.relative_to(folder).as_posix()
        mlflow.log_artifact(str(path), artifact_path if parent == "." else
                            f"{artifact_path}/{parent}")
    return len(files)


def http_budget(timeout_s: float) -> dict[str, str]:
    """MLflow's HTTP variables for a server that stops answering to cost at most `timeout_s`
    seconds a call: `HTTP_RETRIES + 1` tries of at most MLFLOW_HTTP_REQUEST_TIMEOUT each (the
    time to connect, or between bytes of the answer), and urllib3's backoff between them
    (0, then 2 * `HTTP_BACKOFF_S`, plus up to `HTTP_JITTER_S`). They replace any such variables
    in the environment: `CATSDOGS_MLFLOW_TIMEOUT_S` is the one setting."""
    tries = HTTP_RETRIES + 1
    sleeps = sum(HTTP_BACKOFF_S * 2 ** n for n in range(1, HTTP_RETRIES)) + HTTP_JITTER_S
    per_try = max(1, int((timeout_s - sleeps) // tries))
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_RETRIES),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(HTTP_BACKOFF_S),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(HTTP_JITTER_S),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(per_try)}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def _short_cause(text: str) -> str:
    import re

    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip().lower()
    for marker in ("Read timed out", "timed out", "RemoteDisconnected", "Connection aborted",
                   "Connection reset", "Max retries exceeded"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text.splitlines()[0][:120] if text else "no answer"


def outage_cause(exc: BaseException) -> str | None:
    """Why the MLflow server `connect` pointed at did not answer, when `exc` (or an exception it
    was raised from) is a connection failure or timeout talking to it; None for anything else
    (and always for the embedded store)."""
    if _server is None:
        return None
    try:
        import requests
        connection_errors: tuple[type[BaseException], ...] = (
            requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    except ImportError:  # pragma: no cover - MLflow depends on requests
        connection_errors = ()
    # only failures reaching this server: the Docker SDK's requests to its socket, say, are not
    host = urllib.parse.urlsplit(_server).netloc.rsplit("@", 1)[-1]
    for current in _chain(exc):
        if isinstance(current, MlflowUnavailable):
            return None
        text = str(current)
        request = getattr(current, "request", None)
        if host not in text + str(getattr(request, "url", "") or ""):
            continue
        if connection_errors and isinstance(current, connection_errors):
            return _short_cause(text)
        if any(c.__name__ == "MlflowException" for c in type(current).__mro__) and any(
                marker in text for marker in OUTAGE_MARKERS):
            return _short_cause(text)
    return None


def outage(exc: BaseException, what: str) -> MlflowUnavailable | None:
    """The one-line error for `exc` when it is an MLflow outage (`outage_cause`), or the
    `MlflowUnavailable` already in its chain; None otherwise. Seeing an outage makes this
    process's later MLflow calls fail fast (one try, 2 s): the clean-up MLflow does on the way
    out (ending the active run) must not wait out the bound again."""
    for current in _chain(exc):
        if isinstance(current, MlflowUnavailable):
            return current
    cause = outage_cause(exc)
    if cause is None or _server is None:
        return None
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    return MlflowUnavailable(
        f"MLflow server {shown_uri(_server)} stopped answering while {what} ({cause}); "
        f"start it again (or point {TRACKING_ENV} at a running one) and re-run the command: "
        "what it left unfinished is redone or repaired then")


def raise_if_outage(exc: BaseException, what: str) -> None:
    """Raise the one-line `MlflowUnavailable` when `exc` is an MLflow outage; for the code that
    reads any other `MlflowException` as "not found"."""
    found = outage(exc, what)
    if found is not None:
        raise found from None


@contextlib.contextmanager
def talking_to_mlflow(what: str) -> Iterator[None]:
    """Run the block; an MLflow outage in it (`outage`) becomes one `MlflowUnavailable` line
    saying the server stopped answering while `what` ("scoring v3", "tagging the decision on
    v3"). The innermost such block names the step; other exceptions pass unchanged."""
    try:
        yield
    except Exception as exc:
        found = outage(exc, what)
        if found is None or found is exc:
            raise
        raise found from None
