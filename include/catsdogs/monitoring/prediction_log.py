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
    picture          text, NULL unless picture sampling is on: the saved picture's path

`read_predictions(url, since=, until=, model_version=)` returns a pandas DataFrame with the same
columns, `time` as UTC timestamps and the embedding expanded into `emb_0 .. emb_{D-1}` float32
columns (the reference profile's names: `features.embedding_columns`). One binary column rather
than D float columns: Postgres allows at most 1,600 columns, and one `executemany` of short rows
writes several times faster.

Writing (`PredictionLog`): the request path only puts a record on a bounded queue (never blocks:
when the queue is full the record is dropped and counted); a background thread computes the
image statistics, saves sampled pictures, and inserts every `batch_rows` rows or `flush_s`
seconds in one transaction. A store that is down costs the rows of that batch (counted, logged
at most once a minute), never a request. Rows older than `retention_days` are deleted by the same
thread (at start and hourly), and so are the oldest rows past `max_rows` (after each insert):
the log's size is bounded (4.2 KB a row in SQLite with MobileNetV2's embedding). Written here rather than with a logging library because the
writer must batch, bound its memory and drop under pressure, which those do not do for a
database.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from catsdogs.monitoring.features import embedding_columns, image_statistics

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
)
ROW_COLUMNS = tuple(c.name for c in PREDICTIONS.columns if c.name != "id")


def default_url(data_dir: Path) -> str:
    """`sqlite:///<data dir>/monitoring/predictions.db`."""
    return f"sqlite:///{data_dir / 'monitoring' / 'predictions.db'}"


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
        if not sa.inspect(engine).has_table(TABLE):
            return pd.DataFrame(columns=list(ROW_COLUMNS))
        query = sa.select(*(PREDICTIONS.c[name] for name in ROW_COLUMNS)).order_by(
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
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
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
    picture: bytes | None = None       # the upload, only when sampled


def _due(last: float | None, every_s: float) -> bool:
    """Whether a throttled action last done at `last` (`time.monotonic()`, None: never) is due
    again after `every_s` seconds."""
    return last is None or time.monotonic() - last >= every_s


class PredictionLog:
    """Background writer of `PredictionRecord`s (see the module docstring).

    `on_rows(outcome, n)` is told of every row's fate: "written", "dropped_queue_full",
    "dropped_store_error" (the service turns it into a Prometheus counter)."""

    def __init__(self, url: str, batch_rows: int = 256, flush_s: float = 2.0,
                 queue_size: int = 1024, retention_days: float = 30.0, max_rows: int = 0,
                 sample_rate: float = 0.0, sample_dir: Path | None = None,
                 on_rows: Callable[[str, int], None] = lambda _outcome, _n: None) -> None:
        self.url, self.batch_rows, self.flush_s = url, batch_rows, flush_s
        self.retention_days, self.sample_rate, self.sample_dir = (retention_days, sample_rate,
                                                                  sample_dir)
        self.max_rows = max_rows  # 0: no cap
        self.on_rows = on_rows
        self.queue: queue.Queue[PredictionRecord | None] = queue.Queue(maxsize=queue_size)
        self.engine: sa.Engine | None = None
        self.table_ready = False
        # `time.monotonic()` counts from an unspecified point (boot, on Linux): None means
        # "never", so the first retention pass and the first error line are due at once
        self.last_retention: float | None = None
        self.last_error_logged: float | None = None
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self) -> PredictionLog:
        self.thread.start()
        return self

    def wants_picture(self) -> bool:
        """Whether to keep this upload (picture sampling, `sample_rate` of the predictions)."""
        return self.sample_rate > 0 and random.random() < self.sample_rate

    def submit(self, record: PredictionRecord) -> bool:
        """Queue one record without blocking; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.on_rows("dropped_queue_full", 1)
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the writer (waits at most `timeout` seconds)."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)

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
                self._retention(connection)
                self._cap(connection)
        except Exception as exc:  # noqa: BLE001 (a store problem must never reach a request)
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

    def _engine(self) -> sa.Engine:
        if self.engine is None:
            self.engine = make_engine(self.url)
        if not self.table_ready:
            METADATA.create_all(self.engine, checkfirst=True)
            self.table_ready = True
        return self.engine

    def _forget_engine(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        self.engine, self.table_ready = None, False

    def _retention(self, connection: sa.Connection) -> None:
        if self.retention_days <= 0 or not _due(self.last_retention, RETENTION_EVERY_S):
            return
        self.last_retention = time.monotonic()
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=self.retention_days)
        deleted = connection.execute(PREDICTIONS.delete().where(PREDICTIONS.c.time < cutoff))
        if deleted.rowcount:
            log.info("prediction log: deleted %d rows older than %s days", deleted.rowcount,
                     self.retention_days)

    def _cap(self, connection: sa.Connection) -> None:
        """Delete the oldest rows past `max_rows` (by id: the order rows were written in)."""
        if self.max_rows <= 0:
            return
        newest_dropped = connection.execute(
            sa.select(PREDICTIONS.c.id).order_by(PREDICTIONS.c.id.desc())
            .offset(self.max_rows).limit(1)).scalar()
        if newest_dropped is not None:
            deleted = connection.execute(
                PREDICTIONS.delete().where(PREDICTIONS.c.id <= newest_dropped))
            log.debug("prediction log: deleted the %d oldest rows (cap %d rows)",
                      deleted.rowcount, self.max_rows)

    def _row(self, record: PredictionRecord) -> dict[str, Any]:
        stats = image_statistics(record.pixels)
        embedding = None if record.embedding is None else encode_embedding(record.embedding)
        return {"time": record.time, "model_name": record.model_name,
                "model_version": record.model_version, "label": record.label,
                "confidence": float(record.confidence), "width": record.width,
                "height": record.height, "format": record.format, **stats,
                "ood_score": record.ood_score, "in_distribution": record.in_distribution,
                "embedding": embedding, "picture": self._save_picture(record)}

    def _save_picture(self, record: PredictionRecord) -> str | None:
        if record.picture is None or self.sample_dir is None:
            return None
        folder = self.sample_dir / record.time.strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = {"JPEG": "jpg"}.get(record.format or "", (record.format or "bin").lower())
        target = folder / f"{uuid.uuid4().hex}.{suffix}"
        target.write_bytes(record.picture)
        return str(target)
