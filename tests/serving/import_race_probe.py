"""The Bento import with a promotion in the middle, run in a process of its own by
tests/serving/test_import_model.py (BentoML reads BENTOML_HOME once per process):

    python -m tests.serving.import_race_probe NAME PROMOTE_TO DATA_DIR

imports `models:/NAME@champion` with `bentoml.mlflow.import_model` wrapped so that, after the
import step has resolved the alias and before it downloads, `@champion` moves to version
PROMOTE_TO (as `catsdogs promote` moves it); then imports `models:/NAME@champion` again without
the wrapper. Prints one JSON line: per import, the stored Bento model's metadata version and run
id, its `mlflow_version` label, and the run id in the MLmodel file it downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import bentoml
import yaml
from mlflow import MlflowClient

from bentoservice import import_model
from bentoservice.runtime import MLFLOW_MODEL_FOLDER
from catsdogs.config import load_params
from catsdogs.paths import DataPaths
from catsdogs.registry.history import move_champion
from catsdogs.registry.names import BY_PROMOTE

REPO_ROOT = Path(__file__).resolve().parents[2]


def stored(tag: str) -> dict[str, Any]:
    """What the Bento store holds under `tag`."""
    model = bentoml.models.get(tag)
    mlmodel = yaml.safe_load(Path(model.path_of(f"{MLFLOW_MODEL_FOLDER}/MLmodel")).read_text())
    return {"tag": tag, "version": model.info.metadata["version"],
            "run_id": model.info.metadata["run_id"],
            "label_version": model.info.labels["mlflow_version"],
            "downloaded_run_id": mlmodel["run_id"]}


def main(name: str, promote_to: str, data_dir: Path) -> dict[str, Any]:
    params = load_params(REPO_ROOT / "params.yaml", [f"mlflow.registered_model_name={name}"])
    paths = DataPaths.resolve(data_dir)
    original = bentoml.mlflow.import_model

    def promoted_meanwhile(*args: Any, **kwargs: Any) -> Any:
        move_champion(MlflowClient(), name, promote_to, reason="promoted during the import",
                      by=BY_PROMOTE)
        return original(*args, **kwargs)

    uri = f"models:/{name}@champion"
    bentoml.mlflow.import_model = promoted_meanwhile
    try:
        first = import_model.run(params, paths, uri, calibration_images=0)
    finally:
        bentoml.mlflow.import_model = original
    second = import_model.run(params, paths, uri, calibration_images=0)
    return {"first": stored(first.details["tag"]), "second": stored(second.details["tag"]),
            "second_skipped": second.skipped}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))))
