"""The Bento service's one declared entry point: what the package runs to serve a model and to
import one into the Bento store, and the folder it runs them from.

The service itself (`bentoservice/`) sits beside the package in the project's checkout and is not
part of the `catsdogs` wheel; the package never imports it. It names it here, once:

- `SERVICE`: the `bentoml serve` target (bentoservice/bentofile.yaml and docker/service/Dockerfile
  name the same one; tests/foundation/test_service_entry.py keeps them equal);
- `IMPORT_MODEL`: the module run as `python -m` to import a registered version;
- `project_dir()`: the checkout holding the importable `bentoservice` package (also `helm/`),
  found with `importlib.util.find_spec` (nothing is imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from catsdogs.errors import UserError

SERVICE_PACKAGE = "bentoservice"
SERVICE = f"{SERVICE_PACKAGE}.service:CatsDogs"
IMPORT_MODEL = f"{SERVICE_PACKAGE}.import_model"


def project_dir() -> Path:
    """The absolute folder that holds the `bentoservice` package importable here (the project's
    checkout): where `bentoml serve SERVICE` runs. Raises UserError (one line saying how to fix
    it) when the package is not importable, e.g. outside the checkout without PYTHONPATH."""
    spec = importlib.util.find_spec(SERVICE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the Bento service package {SERVICE_PACKAGE!r} is not importable: run "
                        "from the project's folder or put that folder on PYTHONPATH")
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent
