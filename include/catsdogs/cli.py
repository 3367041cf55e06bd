"""The `catsdogs` command: one sub-command per stage, each a thin call into `catsdogs.stages`.

A stage module exposes `run(params, paths, **options) -> Summary` and, optionally,
`add_arguments(parser)` for its own options. Stage modules import heavy libraries (torch, mlflow,
great_expectations) inside their functions, so `catsdogs --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from catsdogs import __version__
from catsdogs.config import load_params
from catsdogs.console import setup_logging
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("catsdogs.stages.ingest", "fetch raw images (kaggle:, dir: or archive: source)"),
    "validate": ("catsdogs.stages.validate", "Great Expectations gate over the raw manifest"),
    "prepare": ("catsdogs.stages.prepare", "drop corrupt/duplicate images, write EDA"),
    "transform": ("catsdogs.stages.transform", "RGB + resize + stratified train/val/test split"),
    "train": ("catsdogs.stages.train", "train the CNN, log to MLflow, register a challenger"),
    "promote": ("catsdogs.stages.promote", "promote the challenger to champion if it is better"),
    "evaluate": ("catsdogs.stages.evaluate", "score a registered model on a folder of images"),
}

_COMMON = {"command", "module", "params", "overrides", "data_dir", "verbose"}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None, help="params file (default: ./params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a parameter (repeatable)")
    parser.add_argument("--data-dir", default=None,
                        help="data directory (default: $CATSDOGS_DATA_DIR or ./data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catsdogs", description="Cats-vs-dogs pipeline stages (configured by params.yaml).")
    parser.add_argument("--version", action="version", version=f"catsdogs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_common(sub)
        sub.set_defaults(module=module_name)
        module = importlib.import_module(module_name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        params = load_params(args.params, args.overrides)
        paths = DataPaths.resolve(args.data_dir)
        module = importlib.import_module(args.module)
        options = {k: v for k, v in vars(args).items() if k not in _COMMON}
        summary = module.run(params, paths, **options)
    except UserError as exc:
        print(f"catsdogs {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"catsdogs {args.command}: interrupted; outputs were left as they were",
              file=sys.stderr)
        return 130
    if not options.get("as_json"):          # a stage's --json output stands alone on stdout
        print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
