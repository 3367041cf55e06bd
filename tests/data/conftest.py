"""Fixtures for the data stages: params, a data dir, a messy image folder (every colour mode and
every kind of bad file), and a fake Kaggle API on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from catsdogs.config import Params, load_params
from catsdogs.paths import DataPaths
from tests.data.fake_kaggle import FakeKaggle, serve
from tests.data.helpers import REPO, messy_files, write_tree


@pytest.fixture
def params() -> Params:
    return load_params(REPO / "params.yaml", ["validation.min_samples_per_class=5",
                                              "transform.image_size=64"])


@pytest.fixture
def data_paths(tmp_path: Path) -> DataPaths:
    return DataPaths(tmp_path / "data")


@pytest.fixture
def messy_dir(tmp_path: Path) -> Path:
    """See `helpers.messy_files`."""
    return write_tree(tmp_path / "messy", messy_files())


@pytest.fixture
def fake_kaggle() -> Iterator[FakeKaggle]:
    state = FakeKaggle(username="alice", key="k3y-never-logged")
    server, _thread = serve(state)
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()
