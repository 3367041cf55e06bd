"""The Bento service's one declared entry point (`catsdogs.deployment.service_entry`): it names a
class that exists, the files that cannot import it (bentofile, Dockerfile) name the same one, and
the checkout is found through the importable `bentoservice` package, or refused in one line."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from catsdogs.deployment.service_entry import IMPORT_MODEL, SERVICE, project_dir
from catsdogs.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_entry_point_names_the_service_class_and_the_import_module() -> None:
    module, _, name = SERVICE.partition(":")
    source = REPO_ROOT / Path(*module.split(".")).with_suffix(".py")
    classes = {node.name for node in ast.walk(ast.parse(source.read_text()))
               if isinstance(node, ast.ClassDef)}
    assert name in classes
    assert (REPO_ROOT / Path(*IMPORT_MODEL.split(".")).with_suffix(".py")).is_file()


def test_bentofile_and_dockerfile_serve_the_declared_service() -> None:
    bentofile = yaml.safe_load((REPO_ROOT / "bentoservice" / "bentofile.yaml").read_text())
    assert bentofile["service"] == SERVICE
    dockerfile = (REPO_ROOT / "docker" / "service" / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    assert cmd[:3] == ["bentoml", "serve", SERVICE]


def test_the_checkout_is_where_the_service_package_is() -> None:
    assert project_dir() == REPO_ROOT


def test_without_the_service_package_the_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="PYTHONPATH") as raised:
        project_dir()
    assert "\n" not in str(raised.value)
