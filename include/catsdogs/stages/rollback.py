"""`catsdogs rollback [--to VERSION]`: move `@champion` back (to the previous champion, or to
VERSION) and deploy it with the same rollout and post-deploy check as the deploy stage. The Airflow
UI offers the same as the `catsdogs_rollback` DAG's `rollback_to` param."""

from __future__ import annotations

import argparse

from catsdogs.config import Params
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", dest="to_version", default=None, metavar="VERSION",
                        help="registered version to bring back (default: the previous champion, "
                        "skipping versions tagged deploy.status=rolled_back)")


def run(params: Params, paths: DataPaths, to_version: str | None = None) -> Summary:
    from mlflow import MlflowClient

    from catsdogs import tracking
    from catsdogs.deployment import targets
    from catsdogs.deployment.rollout import rollback

    tracking.connect(paths)
    to_version = str(to_version).strip().lstrip("vV") if to_version else None
    return rollback(params, paths, targets.choose(params, paths), MlflowClient(), to_version)
