"""Test helpers around the monitor stage's inputs: a registered model version whose training run
holds a reference profile (in a real MLflow server), prediction-log rows written through the
log's own table definition, a real Pushgateway process, and small generated feature frames."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catsdogs.monitoring.drift import embedding_names
from tests.servers import free_port, start_process, stop_process, wait_http

MODEL = "CatsDogsCNN"


def register_with_reference(reference: pd.DataFrame, name: str = MODEL) -> str:
    """A training run with `monitoring/reference.parquet` and a model version of `name` made
    from it (in the current MLflow tracking server). Returns the version."""
    import mlflow

    from catsdogs.monitoring.reference import ARTIFACT_DIR, REFERENCE_FILE

    mlflow.set_experiment("monitor tests")
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        reference.to_parquet(Path(tmp) / REFERENCE_FILE, index=False)
        mlflow.log_artifact(str(Path(tmp) / REFERENCE_FILE), ARTIFACT_DIR)
    client = ensure_registered(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/{ARTIFACT_DIR}",
                                          run_id=run.info.run_id)
    return str(version.version)


def ensure_registered(name: str = MODEL) -> object:
    """An MlflowClient, with the registered model `name` created if it was not yet."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    with suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name)
    return client


def write_log(url: str, rows: pd.DataFrame, version: str, end: dt.datetime | None = None,
              name: str = MODEL) -> None:
    """Insert `rows` (prediction-log columns + emb_*; `picture`, `kept_for`, `prediction_id` and
    `content_hash` when present) as predictions of `name` v`version`, one
    second apart, the newest at `end` (now)."""
    from catsdogs.monitoring.prediction_log import METADATA, PREDICTIONS, make_engine

    end = end or dt.datetime.now(dt.UTC)
    embeddings = rows[embedding_names(rows)].to_numpy(dtype="<f4")
    records = [{
        "time": end - dt.timedelta(seconds=len(rows) - 1 - i), "model_name": name,
        "model_version": version, "label": row["label"], "confidence": float(row["confidence"]),
        "width": int(row["width"]), "height": int(row["height"]), "format": row["format"],
        "brightness": float(row["brightness"]), "contrast": float(row["contrast"]),
        "saturation": float(row["saturation"]), "ood_score": None, "in_distribution": None,
        "embedding": embeddings[i].tobytes(), "picture": row.get("picture"),
        "kept_for": row.get("kept_for"), "prediction_id": row.get("prediction_id"),
        "content_hash": row.get("content_hash")}
        for i, (_, row) in enumerate(rows.iterrows())]
    engine = make_engine(url)
    try:
        METADATA.create_all(engine, checkfirst=True)
        with engine.begin() as connection:
            connection.execute(PREDICTIONS.insert(), records)
    finally:
        engine.dispose()


def generated_rows(count: int, shift: float = 0.0, seed: int = 0, size: int = 32
                   ) -> pd.DataFrame:
    """`count` generated prediction-log rows; `shift` moves the embedding and darkens the
    pictures (0: the reference distribution). For wiring tests: the drift method itself is
    proven on real photos (test_drift_proof.py)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "label": rng.choice(["cat", "dog"], count),
        "confidence": np.clip(rng.normal(0.9 - 0.2 * shift, 0.05, count), 0.5, 1.0),
        "width": rng.integers(200, 500, count), "height": rng.integers(200, 500, count),
        "format": "JPEG",
        "brightness": np.clip(rng.normal(0.45 - 0.25 * shift, 0.1, count), 0, 1),
        "contrast": np.clip(rng.normal(0.25, 0.05, count), 0, 1),
        "saturation": np.clip(rng.normal(0.3, 0.1, count), 0, 1)})
    embedding = rng.normal(shift, 1.0, (count, size)).astype(np.float32)
    return pd.concat([frame, pd.DataFrame(embedding, columns=[f"emb_{i}" for i in range(size)])],
                     axis=1)


@contextmanager
def pushgateway(folder: Path) -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on a free loopback port."""
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway not found: `make system-deps` installs it")
    port = free_port()
    process = start_process([binary, f"--web.listen-address=127.0.0.1:{port}"],
                            folder / "pushgateway.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/healthy", timeout=60, process=process,
                  log_file=folder / "pushgateway.log")
        yield url
    finally:
        stop_process(process)


def scrape(url: str) -> str:
    """The Pushgateway's /metrics text."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        return response.read().decode()
