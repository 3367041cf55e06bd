"""The review queue: which uploads the service keeps as pictures, in which order people label
them, what a drift event adds, and the Label Studio JSON round trip.

Keeping (`keep_reason`, policy `review:` in params.yaml, `catsdogs.config.ReviewParams`): an
upload is kept, and its row's `kept_for` says why, for the first reason that holds:

    ood              the model's out-of-distribution check says it is outside its training data
    low_confidence   the answer's confidence is below `review.low_confidence`
    random           a random share (`review.random_share`; $CATSDOGS_PREDICTION_LOG_SAMPLE_RATE
                     wins, 1 keeps every upload)
    recent           a further random share (`review.recent_share`) kept only `recent_hours`,
                     so a drift event has pictures of its window to queue (`promote_drift`)

`drift` is set by `catsdogs monitor` on the `recent` pictures of a window it found drifted. No
reason: no picture is kept (the row is still written).

The queue (`queue`): unlabelled rows with a picture and a `kept_for` in `QUEUE_ORDER` (ood, then
low_confidence, then drift, then random; `recent` is not in it), lowest confidence first within
a reason, then newest first. A label is recorded like feedback (`prediction_log.record_label`).

A labelled production picture (what `catsdogs ingest` merges) is a row whose `picture` is a
readable path and whose `true_label` is not NULL.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from catsdogs.config import FEEDBACK_LABELS
from catsdogs.errors import UserError
from catsdogs.monitoring.keeping import DRIFT, QUEUE_ORDER, RECENT
from catsdogs.monitoring.prediction_log import (
    PREDICTIONS,
    _utc,
    make_engine,
    record_label,
    upgrade,
)

log = logging.getLogger(__name__)

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image" choice="single" showInline="true">
    <Choice value="cat"/>
    <Choice value="dog"/>
    <Choice value="neither"/>
  </Choices>
</View>"""
"""The Label Studio labelling config the exported tasks fit (`$image`; choices named `label`)."""


@dataclass(frozen=True)
class QueueItem:
    """One picture waiting for a label."""

    prediction_id: str
    kept_for: str
    label: str               # the model's answer
    confidence: float
    model_version: str
    time: dt.datetime
    picture: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without the picture's path (served by id only)."""
        return {"prediction_id": self.prediction_id, "kept_for": self.kept_for,
                "label": self.label, "confidence": self.confidence,
                "model_version": self.model_version, "time": _utc(self.time).isoformat()}


def _order() -> Any:
    return sa.case({reason: rank for rank, reason in enumerate(QUEUE_ORDER)},
                   value=PREDICTIONS.c.kept_for)


def queue(engine: sa.Engine, limit: int = 50, labelled: bool = False) -> list[QueueItem]:
    """The review queue, most useful first (module docstring), at most `limit` pictures;
    `labelled`: the labelled ones instead (an export's annotations). An absent table is an empty
    queue. Raises SQLAlchemyError when the store fails."""
    if not sa.inspect(engine).has_table(PREDICTIONS.name):
        return []
    c = PREDICTIONS.c
    query = (sa.select(c.prediction_id, c.kept_for, c.label, c.confidence, c.model_version,
                       c.time, c.picture)
             .where(c.picture.is_not(None), c.prediction_id.is_not(None),
                    c.kept_for.in_(QUEUE_ORDER),
                    c.true_label.is_not(None) if labelled else c.true_label.is_(None))
             .order_by(_order(), c.confidence, c.time.desc()).limit(limit))
    with engine.connect() as connection:
        return [QueueItem(*row) for row in connection.execute(query)]


def queue_size(engine: sa.Engine) -> dict[str, int]:
    """Unlabelled pictures waiting, by reason (every reason of `QUEUE_ORDER`, 0 when none)."""
    sizes = dict.fromkeys(QUEUE_ORDER, 0)
    if not sa.inspect(engine).has_table(PREDICTIONS.name):
        return sizes
    c = PREDICTIONS.c
    query = (sa.select(c.kept_for, sa.func.count()).where(
        c.picture.is_not(None), c.true_label.is_(None), c.kept_for.in_(QUEUE_ORDER))
        .group_by(c.kept_for))
    with engine.connect() as connection:
        sizes.update({reason: count for reason, count in connection.execute(query)})
    return sizes


def picture_of(engine: sa.Engine, prediction_id: str, root: Path) -> Path | None:
    """The kept picture of `prediction_id`, None when the row has none, the file is gone, or its
    path is not under `root` (the service's picture folder: nothing else is ever served)."""
    query = sa.select(PREDICTIONS.c.picture).where(PREDICTIONS.c.prediction_id == prediction_id)
    with engine.connect() as connection:
        stored = connection.execute(query).scalar()
    if not stored:
        return None
    path = Path(stored).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        return None
    return path


def promote_drift(engine: sa.Engine, since: dt.datetime, until: dt.datetime,
                  model_version: str) -> int:
    """A drift event: the `recent` pictures of `model_version` answered in [since, until] join
    the review queue as `drift`. Returns how many did."""
    c = PREDICTIONS.c
    with engine.begin() as connection:
        moved = connection.execute(PREDICTIONS.update().where(
            c.kept_for == RECENT, c.picture.is_not(None), c.true_label.is_(None),
            c.model_version == str(model_version), c.time >= _utc(since),
            c.time <= _utc(until)).values(kept_for=DRIFT)).rowcount
    log.info("drift: %d pictures of v%s queued for review", moved, model_version)
    return int(moved)


def _choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices",
             "value": {"choices": [label]}}]


def export_label_studio(engine: sa.Engine, image_url: str, limit: int = 10_000
                        ) -> list[dict[str, Any]]:
    """Label Studio tasks (its JSON task format, `LABEL_CONFIG`): the queue's pictures, then the
    labelled ones with their label as an annotation. `data.image` is `image_url` with
    `{prediction_id}` filled in (the service's /review/picture), `data.prediction_id` the key an
    import records by; the model's answer is a prediction (a pre-annotation)."""
    tasks = []
    for labelled in (False, True):
        for item in queue(engine, limit, labelled=labelled):
            task: dict[str, Any] = {
                "data": {"image": image_url.format(prediction_id=item.prediction_id),
                         "prediction_id": item.prediction_id, "kept_for": item.kept_for},
                "predictions": [{"model_version": item.model_version,
                                 "score": item.confidence, "result": _choice(item.label)}]}
            if labelled:
                task["annotations"] = [{"result": _choice(_true_label(engine, item))}]
            tasks.append(task)
    return tasks


def _true_label(engine: sa.Engine, item: QueueItem) -> str:
    with engine.connect() as connection:
        return str(connection.execute(sa.select(PREDICTIONS.c.true_label).where(
            PREDICTIONS.c.prediction_id == item.prediction_id)).scalar())


def labels_from_label_studio(tasks: Any) -> dict[str, str]:
    """prediction_id -> label of the annotated tasks of a Label Studio JSON export (the last
    annotation not cancelled; its `choices` result). Tasks without an annotation are left out.
    Raises UserError naming the tasks when the file is not a task list, a task has no
    `data.prediction_id`, or a label is not one of `FEEDBACK_LABELS` (nothing is recorded then)."""
    if not isinstance(tasks, list):
        raise UserError("not a Label Studio export: expected a JSON list of tasks")
    labels, problems = {}, []
    for index, task in enumerate(tasks):
        where = f"task {task.get('id', index) if isinstance(task, dict) else index}"
        data = task.get("data") if isinstance(task, dict) else None
        prediction_id = data.get("prediction_id") if isinstance(data, dict) else None
        if not isinstance(prediction_id, str) or not prediction_id:
            problems.append(f"{where}: no data.prediction_id")
            continue
        chosen = [result["value"]["choices"] for annotation in task.get("annotations") or []
                  if isinstance(annotation, dict) and not annotation.get("was_cancelled")
                  for result in annotation.get("result") or []
                  if isinstance(result, dict) and result.get("type") == "choices"
                  and isinstance(result.get("value"), dict)
                  and isinstance(result["value"].get("choices"), list)]
        if not chosen:
            continue
        if len(chosen[-1]) != 1 or str(chosen[-1][0]).lower() not in FEEDBACK_LABELS:
            problems.append(f"{where}: label {chosen[-1]!r} is not one of "
                            + ", ".join(FEEDBACK_LABELS))
            continue
        labels[prediction_id] = str(chosen[-1][0]).lower()
    if problems:
        raise UserError(f"{len(problems)} task(s) refused, nothing recorded: "
                        + "; ".join(problems[:10]))
    return labels


def record_labels(engine: sa.Engine, labels: dict[str, str], at: dt.datetime
                  ) -> tuple[int, list[str]]:
    """Record each label like feedback (`record_label`, at `at`): (how many were recorded, the
    ids no row has: unknown, or deleted by the log's cap or retention)."""
    recorded, unknown = 0, []
    for prediction_id, label in labels.items():
        if record_label(engine, prediction_id, label, at) is None:
            unknown.append(prediction_id)
        else:
            recorded += 1
    return recorded, unknown


class ReviewDesk:
    """The service's side of the queue (the review page's data): the prediction log at `url`,
    pictures served only from under `root`. One engine, made on first use (blocking calls: run
    them off the event loop)."""

    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root
        self.engine: sa.Engine | None = None
        self.lock = threading.Lock()

    def _engine(self) -> sa.Engine:
        with self.lock:
            if self.engine is None:
                engine = make_engine(self.url)
                upgrade(engine)
                self.engine = engine
            return self.engine

    def waiting(self, limit: int) -> tuple[list[QueueItem], dict[str, int]]:
        """The first `limit` pictures of the queue and how many wait, by reason."""
        engine = self._engine()
        return queue(engine, limit), queue_size(engine)

    def picture(self, prediction_id: str) -> Path | None:
        """`picture_of` the row under `root`."""
        return picture_of(self._engine(), prediction_id, self.root)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
