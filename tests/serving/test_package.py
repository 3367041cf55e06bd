"""`python -m bentoservice.package` (what `make bento-build` and scripts/docker-bento.sh run):
a real `bentoml build` into the serving fixture's Bento store, the catsdogs package shipped as
a wheel (no import path tricks), the base image set in one place."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.serving.conftest import REPO_ROOT, BentoServer

pytestmark = pytest.mark.services


def test_bento_ships_catsdogs_as_a_wheel(bento_server: BentoServer, tmp_path: Path) -> None:
    home = bento_server.log_file.parent / "bentoml"  # the fixture's store, model imported
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           "PYTHONPATH": str(REPO_ROOT)}
    built = subprocess.run(
        [sys.executable, "-m", "bentoservice.package", "--base-image", "local/py311:test",
         "--out-dir", str(tmp_path / "out")], env=env, cwd=REPO_ROOT, capture_output=True,
        text=True, check=False, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1]
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert (bento / "bento.yaml").is_file(), list(home.rglob("bento.yaml"))
    assert yaml.safe_load((bento / "bento.yaml").read_text())["docker"]["base_image"] == \
        "local/py311:test"
    assert not (bento / "src" / "include").exists()
    assert (bento / "src" / "bentoservice" / "service.py").is_file()
    wheels = list((bento / "env" / "python" / "wheels").glob("catsdogs-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        assert "catsdogs/data/images.py" in wheel.namelist()
    # the bento's code imports catsdogs from that wheel alone (no sys.path fallback)
    probe = subprocess.run(
        [sys.executable, "-c", "import catsdogs.data.images as m, bentoservice.guard; "
         "print(m.__file__)"], cwd=tmp_path, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(wheels[0]), str(bento / "src")])})
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip().startswith(str(wheels[0])), probe.stdout
    assert "sys.path" not in (bento / "src" / "bentoservice" / "service.py").read_text()
