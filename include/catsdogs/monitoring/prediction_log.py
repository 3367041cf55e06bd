"""The prediction log: one row per prediction the service answers, written off the request path.

One code path for every store: SQLAlchemy with a URL. The service's default is
`sqlite:///<data dir>/monitoring/predictions.db` (`default_url`); compose points it at its
Postgres (database `monitoring`). Table `predictions` (`TABLE`):

    id               integer, primary key
    time             timestamp with time zone (UTC), indexed: when the answer was made
    model_name       text: registered model name
    model_version    text: registered model version (indexed)
    label            text: predicted class
    confidence       float: probability of the predicted label
    width, height    integer: the uploaded picture's pixels (as stored, before EXIF rotation)
    format           text: JPEG, PNG, WEBP, ... (Pillow's name)
    brightness, contrast, saturation
                     float in [0, 1]: `features.image_statistics` of the model's input pixels
    ood_score        float, NULL when the model has no out-of-distribution calibration
    in_distribution  boolean, NULL likewise
    embedding        bytes: the penultimate-layer embedding (D = 1280 mobilenet_v2, 512
                     resnet18), NULL when the network gives none: `EMBEDDING_F16` then D float16
                     little-endian (2D+1 bytes; an odd length), or, in rows written before it,
                     D float32 (4D bytes); `encode_embedding` / `decode_embedding`
    picture          text, NULL unless the upload was kept (`kept_for`): the saved picture's
                     path, set NULL (and the file deleted) when the keeping policy's time for
                     it is up; the file is deleted with its row too
    prediction_id    text (32 hex digits, uuid4), unique: the answer's `prediction_id`, the key
                     feedback labels a row by (NULL in rows written before it)
    content_hash     text (64 hex digits): sha256 of the model's input pixels (S,S,3 uint8, C
                     order), so the same picture sent twice has the same hash whatever its file's
                     metadata or container; the monitor counts a picture once per window by it
    true_label       text, NULL until feedback: cat, dog or neither (`FEEDBACK_LABELS`)
    labelled_at      timestamp with time zone (UTC), NULL likewise: when the label was recorded
    kept_for         text, NULL when no picture was kept: why it was (ood, low_confidence,
                     random, recent, drift: `catsdogs.monitoring.review`)

Tables written before a column existed get it added (nullable) when a writer first opens the
store (`upgrade`).

`read_predictions(url, since=, until=, model_version=)` returns a pandas DataFrame with the same
columns, `time` and `labelled_at` as UTC timestamps and the embedding expanded into `emb_0 .. emb_{D-1}` float32
columns (the reference profile's names: `features.embedding_columns`). One binary column rather
than D float columns: Postgres allows at most 1,600 columns, and one `executemany` of short rows
writes several times faster.

Writing (`PredictionLog`): the request path only puts a record on a bounded queue (never blocks:
when the queue is full the record is dropped and counted); a background thread computes the
image statistics and the content hash, saves the kept pictures, and inserts every `batch_rows` rows or `flush_s`
seconds in one transaction. A store that is down costs the rows of that batch (counted, logged
at most once a minute), never a request. Rows older than `retention_days` are deleted by the same
thread (at start and hourly), and so are the oldest rows past `max_rows` (after each insert):
the log's size is bounded (4.2 KB a row in SQLite with MobileNetV2's embedding). A deleted row's
picture file is deleted after the transaction, and so are kept pictures past the keeping
policy's time (`expired_pictures`, in the hourly pass: their `picture` is set NULL).
Written here rather than with a logging library because the
writer must batch, bound its memory and drop under pressure, which those do not do for a
database.

Labels (`PredictionLog.label`): the feedback for a row records `true_label` and `labelled_at`
(UPDATE by `prediction_id`; the later label, by `labelled_at`, wins whatever order the writes
land in). A row still waiting in this process's queue
gets its label right after its insert, in the writer thread, so feedback sent a moment after the
answer is never lost; an id this process does not know is looked up in the store, and once more
after `flush_s` + 1 s when absent (another replica's writer may still hold it). A row the cap or
the retention deleted, or one never written (queue full, store down), has no label to take.
`record_label` says whether a label is its row's first (the UPDATE that finds `labelled_at`
NULL, atomic in the store), so a counter of first labels counts each answer once across
replicas and relabels (`PredictionLog(on_label=)`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from catsdogs.config import ReviewParams
from catsdogs.monitoring.features import embedding_columns, image_statistics
from catsdogs.monitoring.keeping import RECENT, keep_reason

log = logging.getLogger(__name__)

TABLE = "predictions"
EMBEDDING_F16 = b"\x02"  # first byte of an embedding stored as float16 (its length is odd)
RETENTION_EVERY_S = 3600.0
ERROR_LOG_EVERY_S = 60.0

METADATA = sa.MetaData()
PREDICTIONS = sa.Table(
    TABLE, METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(50), nullable=False, index=True),
    sa.Column("label", sa.String(50), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("format", sa.String(20)),
    sa.Column("brightness", sa.Float),
    sa.Column("contrast", sa.Float),
    sa.Column("saturation", sa.Float),
    sa.Column("ood_score", sa.Float),
    sa.Column("in_distribution", sa.Boolean),
    sa.Column("embedding", sa.LargeBinary),
    sa.Column("picture", sa.String(500)),
    sa.Column("prediction_id", sa.String(32), unique=True),
    sa.Column("content_hash", sa.String(64)),
    sa.Column("true_label", sa.String(20)),
    sa.Column("labelled_at", sa.DateTime(timezone=True)),
    sa.Column("kept_for", sa.String(20)),
)
ROW_COLUMNS = tuple(c.name for c in PREDICTIONS.columns if c.name != "id")


def default_url(data_dir: Path) -> str:
    """`sqlite:///<data dir>/monitoring/predictions.db`."""
    return f"sqlite:///{data_dir / 'monitoring' / 'predictions.db'}"


def log_url(data_dir: Path, given: str | None = None) -> str:
    """The prediction log's SQLAlchemy URL as its readers (`catsdogs monitor`, the rollout's
    phases) find it: `given`, else $CATSDOGS_PREDICTION_LOG_URL (MonitoringSettings), else
    `default_url(data_dir)`."""
    from catsdogs.settings import MonitoringSettings, load

    return given or load(MonitoringSettings).prediction_log_url or default_url(data_dir)


def make_engine(url: str) -> sa.Engine:
    """An engine for `url`; for SQLite the folder is created and writers wait up to 30 s for a
    lock (the monitor may be reading)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(url, connect_args={"timeout": 30})
    return sa.create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=0,
                            connect_args=_connect_timeout(parsed))


def upgrade(engine: sa.Engine) -> None:
    """Create the table, or add the columns (nullable) and unique indexes an older table lacks."""
    try:
        METADATA.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        # another writer (a replica, a process starting beside this one) created it between
        # the check and the CREATE; anything else is raised
        if not sa.inspect(engine).has_table(TABLE):
            raise
    inspector = sa.inspect(engine)
    present = {column["name"] for column in inspector.get_columns(TABLE)}
    missing = [column for column in PREDICTIONS.columns if column.name not in present]
    if not missing:
        return
    preparer = engine.dialect.identifier_preparer
    with engine.begin() as connection:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            connection.execute(sa.text(f"ALTER TABLE {preparer.quote(TABLE)} ADD COLUMN "
                                       f"{preparer.quote(column.name)} {kind}"))
            if column.unique:
                sa.Index(f"ix_{TABLE}_{column.name}", column, unique=True).create(connection)
    log.info("prediction log: added column(s) %s to %s", ", ".join(c.name for c in missing),
             TABLE)


def content_hash(pixels: np.ndarray) -> str:
    """sha256 (hex) of S,S,3 uint8 model-input pixels: equal for two uploads the model sees the
    same (a re-sent file, the same photo with other metadata), about 0.1 ms at 224 px."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


@dataclass(frozen=True)
class Labelled:
    """A feedback label recorded on a row: the row's answer (`predicted`, by `model_version`)
    and whether the label is the row's first (`first`; a relabel is not)."""

    predicted: str
    model_version: str
    first: bool


def record_label(engine: sa.Engine, prediction_id: str, label: str,
                 at: dt.datetime) -> Labelled | None:
    """Set the row's `true_label` and `labelled_at` unless it holds a label given later than
    `at` (the later label wins, whichever is written last). Returns None when no row has
    `prediction_id` (unknown, deleted, or not written yet), else the row's answer and whether
    this call gave the row its first label: decided by the one UPDATE that finds `labelled_at`
    NULL, so of two labels written at once exactly one is first. Raises SQLAlchemyError when
    the store fails."""
    moment = _utc(at)
    row = PREDICTIONS.c.prediction_id == prediction_id
    values = {"true_label": label, "labelled_at": moment}
    with engine.begin() as connection:
        first = bool(connection.execute(PREDICTIONS.update().where(row).where(
            PREDICTIONS.c.labelled_at.is_(None)).values(**values)).rowcount)
        if not first:
            connection.execute(PREDICTIONS.update().where(row).where(
                PREDICTIONS.c.labelled_at <= moment).values(**values))
        answer = connection.execute(sa.select(PREDICTIONS.c.label, PREDICTIONS.c.model_version)
                                    .where(row)).first()
    return None if answer is None else Labelled(answer.label, answer.model_version, first)


@dataclass(frozen=True)
class LabelledPicture:
    """A labelled production picture: a row with a kept `picture` and a `true_label`."""

    prediction_id: str
    picture: str               # the kept upload's path, as the service wrote it
    label: str                 # cat, dog or neither (`FEEDBACK_LABELS`)
    labelled_at: dt.datetime   # UTC


def _labelled_rows(url: str, columns: tuple[str, ...], since: dt.datetime | None,
                   pictures_only: bool) -> list[Any]:
    """Rows with a true label (and, when `pictures_only`, a kept picture), labelled at or after
    `since`, oldest label first. No store yet (an SQLite file not written) or no table: none."""
    parsed = sa.make_url(url)
    if (parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
            and not Path(parsed.database).is_file()):
        return []
    engine = make_engine(url)
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(TABLE):
            return []
        present = {column["name"] for column in inspector.get_columns(TABLE)}
        if not {"true_label", "labelled_at", *columns} <= present:
            return []   # written before feedback existed: nothing labelled
        query = (sa.select(*(PREDICTIONS.c[name] for name in columns))
                 .where(PREDICTIONS.c.true_label.is_not(None))
                 .order_by(PREDICTIONS.c.labelled_at))
        if pictures_only:
            query = query.where(PREDICTIONS.c.picture.is_not(None))
        if since is not None:
            query = query.where(PREDICTIONS.c.labelled_at >= _utc(since))
        with engine.connect() as connection:
            return list(connection.execute(query).all())
    finally:
        engine.dispose()


def read_labelled(url: str, since: dt.datetime | None = None) -> list[LabelledPicture]:
    """Every labelled production picture (`picture` and `true_label` not NULL) labelled at or
    after `since` (UTC; None: all), oldest label first. Raises `sqlalchemy.exc.OperationalError`
    when the store cannot be reached."""
    rows = _labelled_rows(url, ("prediction_id", "picture", "true_label", "labelled_at"), since,
                          pictures_only=True)
    return [LabelledPicture(str(r.prediction_id), str(r.picture), str(r.true_label),
                            _utc(r.labelled_at)) for r in rows]


def count_labelled(url: str, since: dt.datetime | None = None) -> int:
    """Labelled production pictures labelled after `since` (strictly; None: all)."""
    rows = _labelled_rows(url, ("labelled_at",), since, pictures_only=True)
    return sum(1 for r in rows if since is None or _utc(r.labelled_at) > _utc(since))


def _connect_timeout(parsed: sa.URL) -> dict[str, Any]:
    return {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}


def read_predictions(url: str, since: dt.datetime | None = None, until: dt.datetime | None = None,
                     model_version: str | None = None) -> Any:
    """Rows with since <= time < until (UTC; None: unbounded) as a pandas DataFrame (columns:
    module docstring, the embedding expanded into emb_* columns). An absent table reads as no
    rows. Raises `sqlalchemy.exc.OperationalError` when the store cannot be reached."""
    import pandas as pd

    engine = make_engine(url)
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(TABLE):
            return pd.DataFrame(columns=list(ROW_COLUMNS))
        present = {column["name"] for column in inspector.get_columns(TABLE)}
        # a table no writer has upgraded yet reads its missing columns as NULL
        query = sa.select(*(PREDICTIONS.c[name] if name in present
                            else sa.null().label(name) for name in ROW_COLUMNS)).order_by(
            PREDICTIONS.c.time)
        if since is not None:
            query = query.where(PREDICTIONS.c.time >= _utc(since))
        if until is not None:
            query = query.where(PREDICTIONS.c.time < _utc(until))
        if model_version is not None:
            query = query.where(PREDICTIONS.c.model_version == str(model_version))
        with engine.connect() as connection:
            rows = connection.execute(query).all()
    finally:
        engine.dispose()
    frame = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    for moment in ("time", "labelled_at"):
        frame[moment] = pd.to_datetime(frame[moment], utc=True)
    vectors = [None if b is None else decode_embedding(b) for b in frame.pop("embedding")]
    sizes = {len(v) for v in vectors if v is not None}
    if len(sizes) == 1 and all(v is not None for v in vectors):
        matrix = np.stack(vectors)
        frame = pd.concat([frame, pd.DataFrame(matrix, columns=embedding_columns(
            matrix.shape[1]))], axis=1)
    elif sizes:
        log.warning("prediction log rows hold embeddings of sizes %s (or none): the embedding "
                    "columns are left out; read one model_version at a time", sorted(sizes))
    return frame


def encode_embedding(embedding: np.ndarray) -> bytes:
    """D floats -> `EMBEDDING_F16` + D float16 little-endian (2D+1 bytes, half of float32's
    size; float16 keeps 3 significant digits, far finer than drift tests resolve)."""
    return EMBEDDING_F16 + np.ascontiguousarray(embedding, dtype="<f2").tobytes()


def decode_embedding(blob: bytes) -> np.ndarray:
    """A stored embedding -> D float32: float16 after the tag (odd length), or the float32 of
    rows written before it (length 4D)."""
    if len(blob) % 2 and blob[:1] == EMBEDDING_F16:
        return np.frombuffer(blob, dtype="<f2", offset=1).astype(np.float32)
    return np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)


def _utc(moment: dt.datetime) -> dt.datetime:
    """An aware time in UTC (a naive one is taken as UTC already)."""
    return moment.astimezone(dt.UTC) if moment.tzinfo is not None else moment.replace(
        tzinfo=dt.UTC)


@dataclass
class PredictionRecord:
    """What the service hands the log per prediction (statistics are computed by the writer)."""

    time: dt.datetime
    model_name: str
    model_version: str
    label: str
    confidence: float
    width: int | None
    height: int | None
    format: str | None
    pixels: np.ndarray                 # H,W,3 uint8: the model's input
    embedding: np.ndarray | None       # D float32
    ood_score: float | None
    in_distribution: bool | None
    picture: bytes | None = None       # the upload, only when kept
    kept_for: str | None = None        # why (`keeping.keep_reason`), with `picture`
    prediction_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _due(last: float | None, every_s: float) -> bool:
    """Whether a throttled action last done at `last` (`time.monotonic()`, None: never) is due
    again after `every_s` seconds."""
    return last is None or time.monotonic() - last >= every_s


class PredictionLog:
    """Background writer of `PredictionRecord`s (see the module docstring).

    `on_rows(outcome, n)` is told of every row's fate: "written", "dropped_queue_full",
    "dropped_store_error" (the service turns it into a Prometheus counter). `on_label(true_label,
    labelled)` is told of every label this process records (`Labelled.first`: the row's first;
    the service counts those in `catsdogs_feedback_total`); a label held for a queued row is
    told when its row is inserted."""

    def __init__(self, url: str, batch_rows: int = 256, flush_s: float = 2.0,
                 queue_size: int = 1024, retention_days: float = 30.0, max_rows: int = 0,
                 policy: ReviewParams | None = None, sample_rate: float | None = None,
                 sample_dir: Path | None = None,
                 on_rows: Callable[[str, int], None] = lambda _outcome, _n: None,
                 on_label: Callable[[str, Labelled], None] = lambda _label, _labelled: None,
                 ) -> None:
        self.url, self.batch_rows, self.flush_s = url, batch_rows, flush_s
        self.retention_days, self.sample_rate, self.sample_dir = (retention_days, sample_rate,
                                                                  sample_dir)
        # None: no picture is ever kept
        self.policy = policy if sample_dir is not None else None
        self.max_rows = max_rows  # 0: no cap
        self.on_rows, self.on_label = on_rows, on_label
        self.queue: queue.Queue[PredictionRecord | None] = queue.Queue(maxsize=queue_size)
        self.engine: sa.Engine | None = None
        self.table_ready = False
        # `time.monotonic()` counts from an unspecified point (boot, on Linux): None means
        # "never", so the first retention pass and the first error line are due at once
        self.last_retention: float | None = None
        self.last_error_logged: float | None = None
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        # ids queued but not yet inserted, and the labels feedback gave them meanwhile, guarded
        # by `lock` (held for these set operations only: `submit` takes it on the request path)
        self.lock = threading.Lock()
        self.pending: set[str] = set()
        self.pending_labels: dict[str, tuple[str, dt.datetime]] = {}
        self.label_engine: sa.Engine | None = None   # feedback's own (request threads)
        self.engine_lock = threading.Lock()

    def start(self) -> PredictionLog:
        self.thread.start()
        return self

    def keep_for(self, confidence: float, in_distribution: bool | None) -> str | None:
        """Why to keep this answer's upload as a picture (`keeping.keep_reason` with `sample_rate`
        as the random share when set), None when the policy keeps none or there is none."""
        if self.policy is None:
            return None
        return keep_reason(self.policy, confidence, in_distribution, self.sample_rate)

    def submit(self, record: PredictionRecord) -> bool:
        """Queue one record without blocking; False (and counted) when the queue is full."""
        with self.lock:
            self.pending.add(record.prediction_id)
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self.lock:
                self.pending.discard(record.prediction_id)
            self.on_rows("dropped_queue_full", 1)
            return False
        return True

    def label(self, prediction_id: str, label: str, at: dt.datetime,
              wait_s: float | None = None) -> bool:
        """Record feedback `label` (at `at`, UTC) for the row `prediction_id`: True when it is
        recorded (or queued behind its row's insert), False when no such row exists, also after
        `wait_s` seconds (None: `flush_s` + 1) and a second look. Blocking: call it off the event
        loop. Raises SQLAlchemyError when the store fails."""
        if self._held(prediction_id, label, at):
            return True
        with self.engine_lock:
            if self.label_engine is None:
                engine = make_engine(self.url)
                upgrade(engine)
                self.label_engine = engine
        if self._record(self.label_engine, prediction_id, label, at):
            return True
        time.sleep(self.flush_s + 1.0 if wait_s is None else wait_s)
        return self._held(prediction_id, label, at) or self._record(
            self.label_engine, prediction_id, label, at)

    def _record(self, engine: sa.Engine, prediction_id: str, label: str,
                at: dt.datetime) -> bool:
        """`record_label`, telling `on_label`; False when the row is not in the store."""
        labelled = record_label(engine, prediction_id, label, at)
        if labelled is not None:
            self.on_label(label, labelled)
        return labelled is not None

    def _held(self, prediction_id: str, label: str, at: dt.datetime) -> bool:
        """Keep the label of a row still queued here (applied right after its insert)."""
        with self.lock:
            if prediction_id in self.pending:
                self.pending_labels[prediction_id] = (label, at)
                return True
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the writer (waits at most `timeout` seconds)."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)
        if self.label_engine is not None:
            self.label_engine.dispose()

    def _run(self) -> None:
        pending: list[PredictionRecord] = []
        deadline = None
        stop = False
        while not stop:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self.queue.get(timeout=timeout)
                if item is None:
                    stop = True
                else:
                    pending.append(item)
                    deadline = deadline or time.monotonic() + self.flush_s
            except queue.Empty:
                pass
            if pending and (stop or len(pending) >= self.batch_rows
                            or time.monotonic() >= (deadline or 0)):
                self._write(pending)
                pending, deadline = [], None

    def _write(self, records: list[PredictionRecord]) -> None:
        try:
            rows = [self._row(r) for r in records]
            engine = self._engine()
            with engine.begin() as connection:
                connection.execute(PREDICTIONS.insert(), rows)
                gone = self._retention(connection) + self._cap(connection)
            self._release(records, engine)
            _delete_files(gone)
        except Exception as exc:  # noqa: BLE001 (a store problem must never reach a request)
            lost = self._release(records, None)
            if lost:
                log.warning("prediction log: %d feedback label(s) lost with their rows", lost)
            self.on_rows("dropped_store_error", len(records))
            self._forget_engine()
            if _due(self.last_error_logged, ERROR_LOG_EVERY_S):
                self.last_error_logged = time.monotonic()
                log.warning("prediction log: %d rows not written to %s (%s: %s); the service "
                            "keeps answering, later batches retry", len(records),
                            sa.make_url(self.url).render_as_string(hide_password=True),
                            type(exc).__name__, str(exc).splitlines()[0][:300])
            return
        self.on_rows("written", len(rows))

    def _release(self, records: list[PredictionRecord], engine: sa.Engine | None) -> int:
        """The records' rows are inserted (`engine`) or lost (None): they stop being pending and
        the labels feedback gave them meanwhile are applied (a label given since, straight to
        the store, is later and stays: `record_label`); returns how many labels there were."""
        with self.lock:
            labels = {}
            for record in records:
                self.pending.discard(record.prediction_id)
                if record.prediction_id in self.pending_labels:
                    labels[record.prediction_id] = self.pending_labels.pop(record.prediction_id)
        try:
            for prediction_id, (label, at) in labels.items() if engine is not None else ():
                self._record(engine, prediction_id, label, at)
        except sa.exc.SQLAlchemyError as exc:   # the rows are in: only the labels are lost
            log.warning("prediction log: %d feedback label(s) not recorded (%s: %s)",
                        len(labels), type(exc).__name__, str(exc).splitlines()[0][:300])
        return len(labels)

    def _engine(self) -> sa.Engine:
        if self.engine is None:
            self.engine = make_engine(self.url)
        if not self.table_ready:
            upgrade(self.engine)
            self.table_ready = True
        return self.engine

    def _forget_engine(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        self.engine, self.table_ready = None, False

    def _retention(self, connection: sa.Connection) -> list[str]:
        """Hourly: delete rows older than `retention_days`, and unlink kept pictures past the
        keeping policy's time. Returns the picture files to delete once committed."""
        if not _due(self.last_retention, RETENTION_EVERY_S):
            return []
        self.last_retention = time.monotonic()
        now = dt.datetime.now(dt.UTC)
        gone = []
        if self.policy is not None:
            expired = expired_pictures(self.policy, now)
            gone += _pictures(connection, expired)
            connection.execute(PREDICTIONS.update().where(expired).values(picture=None))
        if self.retention_days > 0:
            old = PREDICTIONS.c.time < now - dt.timedelta(days=self.retention_days)
            gone += _pictures(connection, old)
            deleted = connection.execute(PREDICTIONS.delete().where(old))
            if deleted.rowcount:
                log.info("prediction log: deleted %d rows older than %s days", deleted.rowcount,
                         self.retention_days)
        return gone

    def _cap(self, connection: sa.Connection) -> list[str]:
        """Delete the oldest rows past `max_rows` (by id: the order rows were written in);
        returns their picture files."""
        if self.max_rows <= 0:
            return []
        newest_dropped = connection.execute(
            sa.select(PREDICTIONS.c.id).order_by(PREDICTIONS.c.id.desc())
            .offset(self.max_rows).limit(1)).scalar()
        if newest_dropped is None:
            return []
        oldest = PREDICTIONS.c.id <= newest_dropped
        gone = _pictures(connection, oldest)
        deleted = connection.execute(PREDICTIONS.delete().where(oldest))
        log.debug("prediction log: deleted the %d oldest rows (cap %d rows)",
                  deleted.rowcount, self.max_rows)
        return gone

    def _row(self, record: PredictionRecord) -> dict[str, Any]:
        stats = image_statistics(record.pixels)
        embedding = None if record.embedding is None else encode_embedding(record.embedding)
        picture = self._save_picture(record)
        return {"time": record.time, "model_name": record.model_name,
                "model_version": record.model_version, "label": record.label,
                "confidence": float(record.confidence), "width": record.width,
                "height": record.height, "format": record.format, **stats,
                "ood_score": record.ood_score, "in_distribution": record.in_distribution,
                "embedding": embedding, "picture": picture,
                "kept_for": record.kept_for if picture is not None else None,
                "prediction_id": record.prediction_id,
                "content_hash": content_hash(record.pixels)}

    def _save_picture(self, record: PredictionRecord) -> str | None:
        if record.picture is None or record.kept_for is None or self.sample_dir is None:
            return None
        folder = self.sample_dir / record.time.strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = {"JPEG": "jpg"}.get(record.format or "", (record.format or "bin").lower())
        target = folder / f"{uuid.uuid4().hex}.{suffix}"
        target.write_bytes(record.picture)
        return str(target)


def expired_pictures(policy: ReviewParams, now: dt.datetime) -> Any:
    """The WHERE clause of rows whose kept picture is past the policy's time: `recent` ones older
    than `recent_hours`, any older than `retention_days` (when > 0)."""
    c = PREDICTIONS.c
    clauses = [sa.and_(c.kept_for == RECENT, c.time < now - dt.timedelta(hours=policy.recent_hours))]
    if policy.retention_days > 0:
        clauses.append(c.time < now - dt.timedelta(days=policy.retention_days))
    return sa.and_(c.picture.is_not(None), sa.or_(*clauses))


def _pictures(connection: sa.Connection, where: Any) -> list[str]:
    """The picture files of the rows `where` selects."""
    return [path for (path,) in connection.execute(sa.select(PREDICTIONS.c.picture).where(
        where, PREDICTIONS.c.picture.is_not(None)))]


def _delete_files(paths: list[str]) -> None:
    """Delete picture files whose rows (or picture links) are gone; one already gone is fine."""
    for path in paths:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("prediction log: picture %s not deleted: %s", path, exc)
    if paths:
        log.info("prediction log: deleted %d kept picture(s)", len(paths))
