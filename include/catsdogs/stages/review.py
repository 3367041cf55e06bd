"""`catsdogs review [status | export | import FILE]`: the review queue from the command line.

    catsdogs review [status]                       how many kept pictures wait for a label, by
                                                   reason (ood, low_confidence, drift, random)
    catsdogs review export --format label-studio [--image-url URL] [-o FILE]
                                                   the queue (then the labelled pictures, with
                                                   their label as an annotation) as Label Studio
                                                   JSON tasks, on stdout unless -o is given
    catsdogs review import FILE                    the labels of a Label Studio JSON export,
                                                   recorded by each task's data.prediction_id

A CLI command only (not a DAG task). The prediction log is `--log`, else
$CATSDOGS_PREDICTION_LOG_URL, else the SQLite file in the data dir (`catsdogs monitor`'s rule).
Labels are recorded like feedback (`catsdogs.monitoring.review.record_labels`): an id no row has
is counted and named in the summary (`unknown`), not fatal; a label that is not cat, dog or
neither refuses the whole file before anything is recorded (exit code 2). The tasks fit
`catsdogs.monitoring.review.LABEL_CONFIG` (docs/serving.md, "Review queue").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary

ACTIONS = ("status", "export", "import")
FORMATS = ("label-studio",)
IMAGE_URL = "http://localhost:3000/review/picture?prediction_id={prediction_id}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=ACTIONS, default="status",
                        help="status (default): the queue's size; export: Label Studio tasks; "
                             "import FILE: record a Label Studio export's labels")
    parser.add_argument("file", nargs="?", type=Path, default=None,
                        help="import: the Label Studio JSON export")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="label-studio",
                        help="export/import format (Label Studio's JSON tasks)")
    parser.add_argument("--image-url", default=IMAGE_URL,
                        help="export: each task's data.image, {prediction_id} filled in "
                             f"(default: {IMAGE_URL}, the service's /review/picture)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="export: write the tasks here instead of stdout")
    parser.add_argument("--log", default=None, dest="log_url",
                        help="prediction log (SQLAlchemy URL; default "
                             "$CATSDOGS_PREDICTION_LOG_URL, else sqlite:///<data dir>/"
                             "monitoring/predictions.db)")


def writes_stdout(action: str = "status", output: Path | None = None, **_: Any) -> bool:
    """Whether the command's data goes to stdout (the CLI then prints its summary on stderr)."""
    return action == "export" and output is None


def run(params: Params, paths: DataPaths, action: str = "status", file: Path | None = None,
        fmt: str = "label-studio", image_url: str = IMAGE_URL, output: Path | None = None,
        log_url: str | None = None) -> Summary:
    import sqlalchemy as sa

    from catsdogs.monitoring import review
    from catsdogs.monitoring.prediction_log import log_url as resolve_log_url
    from catsdogs.monitoring.prediction_log import make_engine

    del params, fmt   # one format; the policy is the service's
    url = resolve_log_url(paths.root, log_url)
    shown = sa.make_url(url).render_as_string(hide_password=True)
    if action == "import" and file is None:
        raise UserError("`catsdogs review import` needs the Label Studio export: "
                        "catsdogs review import FILE")
    if "{prediction_id}" not in image_url:
        raise UserError(f"--image-url {image_url!r} has no {{prediction_id}} to fill in")
    engine = make_engine(url)
    try:
        if action == "import":
            assert file is not None
            labels = review.labels_from_label_studio(_read_json(file))
            recorded, unknown = review.record_labels(engine, labels, dt.datetime.now(dt.UTC))
            return Summary("review", f"{recorded} labels recorded from {file} in {shown}"
                           + (f"; {len(unknown)} unknown prediction ids (deleted or never "
                              f"logged here): {', '.join(unknown[:5])}" if unknown else ""),
                           details={"recorded": recorded, "unknown": unknown,
                                    "annotated_tasks": len(labels), "store": shown})
        if action == "export":
            tasks = review.export_label_studio(engine, image_url)
            text = json.dumps(tasks, indent=2)
            if output is None:
                sys.stdout.write(text + "\n")
            else:
                output.write_text(text + "\n")
            labelled = sum(1 for task in tasks if "annotations" in task)
            return Summary("review", f"{len(tasks)} Label Studio tasks ({labelled} labelled) "
                           f"from {shown}" + (f" written to {output}" if output else ""),
                           details={"tasks": len(tasks), "labelled": labelled, "store": shown})
        waiting = review.queue_size(engine)
        return Summary("review", f"{sum(waiting.values())} pictures wait for a label in {shown} ("
                       + ", ".join(f"{reason} {n}" for reason, n in waiting.items()) + ")",
                       details={"waiting": waiting, "store": shown})
    except sa.exc.SQLAlchemyError as exc:
        raise UserError(f"prediction log {shown} unreadable ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}); point --log at it") from None
    finally:
        engine.dispose()


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not JSON: {exc}") from None
