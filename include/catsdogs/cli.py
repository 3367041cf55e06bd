"""The `catsdogs` command: one sub-command per entry of the stage table
(`catsdogs.orchestration.stage_table.STAGES`), each a thin call into `catsdogs.stages.<name>`.

A stage module exposes `run(params, paths, **options) -> Summary` and, optionally,
`add_arguments(parser)` for its own options. Stage modules import heavy libraries (torch, mlflow,
great_expectations) inside their functions, so `catsdogs --help` stays fast.

Errors: a `UserError` is one line on stderr and exit code `exc.exit_code`; an MLflow server that
stops answering anywhere in a stage is one too (`catsdogs.tracking.talking_to_mlflow` around the
whole stage: "MLflow server <uri> stopped answering while ...", exit code 4), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from catsdogs import __version__
from catsdogs.config import load_params
from catsdogs.console import setup_logging
from catsdogs.errors import UserError
from catsdogs.orchestration.stage_table import STAGES
from catsdogs.paths import DataPaths
from catsdogs.settings import LoggingSettings, StageSettings, TrackingSettings, load
from catsdogs.summary import SUMMARY_FILE_ENV
from catsdogs.tracking import talking_to_mlflow

_COMMON = {"command", "module", "params", "overrides", "data_dir", "verbose", "as_json",
           "summary_file"}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None,
                        help="params file (default: $CATSDOGS_PARAMS, else ./params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a parameter (repeatable)")
    parser.add_argument("--data-dir", default=None,
                        help="data directory (default: $CATSDOGS_DATA_DIR or ./data)")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print the stage's summary as one JSON document")
    parser.add_argument("--summary-file", type=Path,
                        default=None,
                        help=f"also write the JSON summary to this file (${SUMMARY_FILE_ENV})")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catsdogs", description="Cats-vs-dogs pipeline stages (configured by params.yaml).")
    parser.add_argument("--version", action="version", version=f"catsdogs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for stage in STAGES:
        sub = commands.add_parser(stage.name, help=stage.description,
                                  description=stage.description)
        _add_common(sub)
        sub.set_defaults(module=stage.module)
        module = importlib.import_module(stage.module)
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
    return parser


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM (Airflow stopping a task, `kill`, a pod's shutdown) unwinds like Ctrl-C, so every
    stage's clean-up (`finally`, atomic outputs, a deploy's undo) runs before the process ends."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _say_error(line: str, log_format: str) -> None:
    """The one line a failed stage ends with: on stderr as it is (text), or as an ERROR record
    with the stage's fields (json: what Loki gets, docs/logs.md)."""
    if log_format == "json":
        logging.getLogger("catsdogs.cli").error("%s", line)
    else:
        print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    log_format = "text"  # until the settings are read
    try:
        # every line of the stage names it and the Airflow run it belongs to (JSON fields in
        # CATSDOGS_LOG_FORMAT=json; docs/logs.md)
        airflow = load(TrackingSettings)
        log_format = load(LoggingSettings).log_format
        setup_logging(args.verbose, log_format, stage=args.command,
                      dag_id=airflow.airflow_ctx_dag_id, run_id=airflow.airflow_ctx_dag_run_id)
        stage_settings = load(StageSettings)
        params = load_params(args.params or stage_settings.params, args.overrides)
        summary_file = args.summary_file or stage_settings.summary_file
        paths = DataPaths.resolve(args.data_dir)
        module = importlib.import_module(args.module)
        options = {k: v for k, v in vars(args).items() if k not in _COMMON}
        with talking_to_mlflow(f"running `catsdogs {args.command}`"):
            summary = module.run(params, paths, **options)
    except UserError as exc:
        _say_error(f"catsdogs {args.command}: error: {exc}", log_format)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        how = f" by {exc}" if str(exc) else ""
        _say_error(f"catsdogs {args.command}: interrupted{how}; outputs were left as they were",
                   log_format)
        return 143 if str(exc) == "SIGTERM" else 130
    if summary_file:
        summary.write(Path(summary_file))
    # a command whose stdout carries its data (`review export`) says so: its summary goes to stderr
    data_on_stdout = getattr(module, "writes_stdout", lambda **_: False)(**options)
    print(json.dumps(summary.to_dict(), indent=2) if args.as_json else summary.line(),
          file=sys.stderr if data_on_stdout else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
