"""The ingest stage (being built: see the open issue)."""

from __future__ import annotations

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary


def run(params: Params, paths: DataPaths) -> Summary:
    raise UserError("the ingest stage is not built yet")
