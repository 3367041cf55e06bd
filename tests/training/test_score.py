"""`catsdogs score`: rows and rejections on a folder and an archive, a re-run skipped, and a
`kill -9` of a real `catsdogs score` process mid-run, then a re-run with one row per picture."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from catsdogs import cli
from catsdogs.data.synthetic import generate_dataset
from catsdogs.paths import DataPaths

REPO = Path(__file__).resolve().parents[2]


def pictures(tiny_data: DataPaths, target: Path, extra_per_class: int = 0) -> Path:
    """The tiny data set's pictures in nested folders (plus generated ones), a corrupt JPEG, a
    text file and OS clutter."""
    for index, file in enumerate(sorted(tiny_data.transformed.rglob("*.jpg"))):
        destination = target / ("nested/deeper" if index % 3 else "top") / f"{index}-{file.name}"
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, destination)
    if extra_per_class:
        generated = generate_dataset(target.parent / f"{target.name}-generated",
                                     per_class=extra_per_class, seed=7)
        for file in sorted(generated.rglob("*.jpg")):
            shutil.copy(file, target / f"g-{file.parent.name}-{file.name}")
    good = next((target / "top").glob("*.jpg")).read_bytes()
    (target / "broken.jpg").write_bytes(good[:len(good) // 3])       # a truncated JPEG
    (target / "notes.txt").write_text("not a picture\n")
    (target / ".DS_Store").write_bytes(b"\0clutter")
    return target


def read_report(summary: dict) -> pd.DataFrame:
    frame = pd.read_parquet(summary["files"]["parquet"])
    csv = pd.read_csv(summary["files"]["csv"])
    assert list(csv["path"]) == list(frame["path"]) and len(csv) == len(frame)
    return frame


def test_score_folder_rows_rejections_and_rerun_skipped(
        trained: dict, tiny_data: DataPaths, tracking_uri: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = pictures(tiny_data, tmp_path / "photos")
    data = tmp_path / "data"
    argv = ["score", "--images", str(folder), "--model", str(trained["version"]), "--json",
            "--data-dir", str(data), "--batch-size", "8"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] is False and summary["version"] == str(trained["version"])
    good = sorted(p for p in folder.rglob("*.jpg") if p.name != "broken.jpg")
    frame = read_report(summary)
    expected = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                      if p.is_file() and p.name != ".DS_Store")
    assert sorted(frame["path"]) == expected and len(frame) == len(good) + 2
    rows = frame.set_index("path")
    assert rows.loc["broken.jpg", "rejection"] in ("truncated", "corrupt")
    assert rows.loc["notes.txt", "rejection"] == "not_an_image"
    assert rows.loc["notes.txt", "sha256"] == hashlib.sha256(b"not a picture\n").hexdigest()
    assert pd.isna(rows.loc["notes.txt", "label"]) and pd.isna(rows.loc["notes.txt", "prob_dog"])
    scored = frame[frame["rejection"].isna()]
    assert len(scored) == len(good) and set(scored["label"]) <= {"cat", "dog"}
    assert ((scored["prob_cat"] + scored["prob_dog"]) - 1).abs().max() < 1e-4
    assert (scored["confidence"] == scored[["prob_cat", "prob_dog"]].max(axis=1)).all()
    assert scored["label"].eq(scored["prob_dog"].ge(0.5).map({True: "dog", False: "cat"})).all()
    assert scored["ood_score"].notna().all() and scored["in_distribution"].notna().all()
    assert set(frame["model_version"]) == {str(trained["version"])}
    first = good[0]
    assert rows.loc[first.relative_to(folder).as_posix(), "sha256"] == \
        hashlib.sha256(first.read_bytes()).hexdigest()
    assert summary["count"] == len(frame) and summary["rejected"] == 2
    assert summary["rejections"] == {"not_an_image": 1, rows.loc["broken.jpg", "rejection"]: 1}
    assert sum(summary["labels"].values()) == len(good)
    assert summary["ood_calibration"] is True and summary["out_of_distribution"] == \
        int((~scored["in_distribution"].astype(bool)).sum())
    assert summary["images_per_s"] > 0
    assert Path(summary["report"]).parent == data / "reports" / "scoring"
    assert not list(Path(summary["report"]).parent.glob(".*partial"))
    # the report is the artifacts of an MLflow run (what the Airflow task's button opens)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(summary["run_id"])
    assert run.info.experiment_id == summary["experiment_id"] != trained["experiment_id"]
    assert summary["model_run_id"] == trained["run_id"] != summary["run_id"]
    assert {a.path for a in client.list_artifacts(summary["run_id"], "scoring")} == {
        "scoring/scores.parquet", "scoring/scores.csv", "scoring/summary.json"}
    assert run.data.metrics["rejected"] == 2 and run.data.metrics["count"] == len(frame)

    assert cli.main(argv) == 0                                  # same pictures, same version
    again = json.loads(capsys.readouterr().out)
    assert again["skipped"] is True and again["report"] == summary["report"]
    assert again["run_id"] == summary["run_id"]

    # the same pictures as a zip: the same rows, under paths inside the archive
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in folder.rglob("*"):
            if path.is_file():
                bundle.write(path, path.relative_to(folder).as_posix())
    assert cli.main([*argv[:2], f"archive:{archive}", *argv[3:]]) == 0
    zipped = json.loads(capsys.readouterr().out)
    assert zipped["report"] != summary["report"]
    other = read_report(zipped).set_index("path").sort_index()
    assert list(other.index) == expected
    assert (other["rejection"].fillna("") == rows.sort_index()["rejection"].fillna("")).all()
    assert (other["label"].fillna("") == rows.sort_index()["label"].fillna("")).all()


KILLABLE = """
import sys, time
from catsdogs import cli
from catsdogs.stages import score
write = score.write_chunk
def slow(frame, target):
    write(frame, target)
    time.sleep(0.4)
score.write_chunk = slow
sys.exit(cli.main(sys.argv[1:]))
"""


def test_kill_9_mid_run_then_rerun_has_one_row_per_picture(
        trained: dict, tiny_data: DataPaths, tracking_uri: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A real `catsdogs score` process (its chunk writes slowed down, decoding over a pool of
    2 processes) is SIGKILLed once it has written some chunks; the re-run scores the rest."""
    folder = pictures(tiny_data, tmp_path / "photos", extra_per_class=20)
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != ".DS_Store"]
    assert len(files) >= 64                      # enough for the decoding pool
    data = tmp_path / "data"
    args = ["score", "--images", str(folder), "--model", f"models:/CatsDogsCNN/"
            f"{trained['version']}", "--data-dir", str(data), "--batch-size", "8",
            "--workers", "2"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO),
                                          os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reports = data / "reports" / "scoring"
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline and process.poll() is None:
            chunks = list(reports.glob(".*.partial/chunk-*.parquet"))
            if len(chunks) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        assert len(chunks) >= 2, "no chunk written in time"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    partial = next(reports.glob(".*.partial"))
    left = sorted(partial.glob("chunk-*.parquet"))
    assert 2 <= len(left) < -(-len(files) // 8)                 # some chunks, not all
    assert not [p for p in reports.iterdir() if not p.name.startswith(".")]   # no report yet

    assert cli.main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] is False and summary["resumed"] == 8 * len(left)
    frame = read_report(summary)
    assert len(frame) == len(files) == frame["path"].nunique() == summary["count"]
    assert sorted(frame["path"]) == sorted(p.relative_to(folder).as_posix() for p in files)
    assert summary["rejected"] == 2 and not partial.exists()
