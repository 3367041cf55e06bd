"""Ingest: layouts, sources, idempotency, atomicity, and the real Kaggle client against a fake API.

Kaggle: the real `kaggle` client (no patching) runs inside a `catsdogs ingest` process and talks
to a fake Kaggle HTTP API on loopback (see fake_kaggle.py for how it is routed there).
"""

from __future__ import annotations

import csv
import hashlib
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.data.sources import label_for, parse_source
from catsdogs.stages import ingest
from tests.data.fake_kaggle import FakeKaggle
from tests.data.helpers import (
    CATSDOGS,
    catsdogs,
    encode,
    kaggle_env,
    noise_image,
    write_tree,
    zip_of,
)

CLASSES = ["cat", "dog"]


def _manifest(paths: DataPaths) -> list[dict[str, str]]:
    with paths.raw_manifest.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(("relative", "label"), [
    ("PetImages/Cat/1.jpg", "cat"),
    ("train/cats/x.jpg", "cat"),
    ("train/DOGS/x.png", "dog"),
    ("train/cat.123.jpg", "cat"),
    ("dog_7.jpeg", "dog"),
    ("train/dogs/cat.5.jpg", "dog"),   # the folder wins over the file name
    ("test1/1.jpg", None),
    ("catalogue/x.jpg", None),
])
def test_labels_from_any_layout(relative: str, label: str | None) -> None:
    assert label_for(Path(relative), CLASSES) == label


@pytest.mark.parametrize("text", ["ftp:x", "kaggle:no-slash", "dir:", "kaggle:a/b/c"])
def test_bad_source_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError, match="kaggle:OWNER/DATASET|OWNER/DATASET"):
        parse_source(text)


def test_dir_source_normalises_layouts(tmp_path: Path, params: Params,
                                       data_paths: DataPaths) -> None:
    jpeg = encode(noise_image(1), "JPEG")
    source = write_tree(tmp_path / "src", {
        "PetImages/Cat/1.jpg": jpeg, "PetImages/Dog/1.jpg": encode(noise_image(2), "JPEG"),
        "extra/train/cats/1.jpg": encode(noise_image(3), "JPEG"),  # same name: renamed
        "flat/dog.9.png": encode(noise_image(4), "PNG"),
        "PetImages/Cat/Thumbs.db": b"junk", "__MACOSX/Cat/._1.jpg": b"junk",
        "unlabelled/README.txt": b"no label",
    })
    summary = ingest.run(params, data_paths, source=f"dir:{source}")
    rows = _manifest(data_paths)
    assert sorted(r["path"] for r in rows) == ["cat/1-2.jpg", "cat/1.jpg", "dog/1.jpg",
                                               "dog/dog.9.png"]
    by_path = {r["path"]: r for r in rows}
    assert by_path["cat/1.jpg"]["sha256"] == hashlib.sha256(jpeg).hexdigest()
    assert int(by_path["cat/1.jpg"]["bytes"]) == len(jpeg)
    assert (data_paths.raw / "cat" / "1.jpg").read_bytes() == jpeg
    assert summary.details["left_out"] == {"clutter": 2, "unlabelled": 1}


def test_rerun_skips_and_a_change_reingests(tmp_path: Path, params: Params,
                                            data_paths: DataPaths) -> None:
    source = write_tree(tmp_path / "src", {"cat/a.jpg": encode(noise_image(1), "JPEG"),
                                           "dog/b.jpg": encode(noise_image(2), "JPEG")})
    assert not ingest.run(params, data_paths, source=f"dir:{source}").skipped
    assert ingest.run(params, data_paths, source=f"dir:{source}").skipped
    (source / "dog" / "c.jpg").write_bytes(encode(noise_image(3), "JPEG"))
    assert not ingest.run(params, data_paths, source=f"dir:{source}").skipped
    assert len(_manifest(data_paths)) == 3


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_source(tmp_path: Path, params: Params, data_paths: DataPaths, kind: str) -> None:
    tree = write_tree(tmp_path / "train", {"cat.1.jpg": encode(noise_image(1), "JPEG"),
                                           "dog.1.jpg": encode(noise_image(2), "JPEG"),
                                           "dog.2.jpg": encode(noise_image(3), "JPEG")})
    archive = tmp_path / f"pets.{kind}"
    if kind == "zip":
        archive.write_bytes(zip_of(tree))
    else:
        with tarfile.open(archive, "w:gz") as bundle:
            bundle.add(tree, arcname="train")
    summary = ingest.run(params, data_paths, source=f"archive:{archive}")
    assert summary.details["per_class"] == {"cat": 1, "dog": 2}
    assert not any(p.name.startswith(".") and p.is_dir() for p in data_paths.raw.iterdir())


def test_missing_paths_and_empty_sources_are_user_errors(tmp_path: Path, params: Params,
                                                         data_paths: DataPaths) -> None:
    with pytest.raises(UserError, match="no such folder"):
        ingest.run(params, data_paths, source=f"dir:{tmp_path / 'nope'}")
    (tmp_path / "bad.zip").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="neither a zip nor a tar"):
        ingest.run(params, data_paths, source=f"archive:{tmp_path / 'bad.zip'}")
    write_tree(tmp_path / "empty", {"readme.md": b"nothing labelled"})
    with pytest.raises(UserError, match="no labelled images"):
        ingest.run(params, data_paths, source=f"dir:{tmp_path / 'empty'}")
    assert not data_paths.raw.exists()


def test_kaggle_download_with_the_real_client(tmp_path: Path, fake_kaggle: FakeKaggle) -> None:
    tree = write_tree(tmp_path / "PetImages", {"Cat/1.jpg": encode(noise_image(1), "JPEG"),
                                               "Dog/1.jpg": encode(noise_image(2), "JPEG"),
                                               "Dog/2.jpg": encode(noise_image(3), "JPEG")})
    fake_kaggle.datasets["owner/pets"] = zip_of(tree)
    (tmp_path / "home").mkdir()
    env = kaggle_env(fake_kaggle, tmp_path / "home", tmp_path / "data")
    done = catsdogs("ingest", "--source", "kaggle:owner/pets", env=env)
    assert done.returncode == 0, done.stderr
    assert "3 files (cat 1, dog 2)" in done.stdout
    assert fake_kaggle.requests[0]["body"] == {"ownerSlug": "owner", "datasetSlug": "pets"}
    assert fake_kaggle.key not in done.stdout + done.stderr

    missing = catsdogs("ingest", "--source", "kaggle:owner/gone", env=env)
    assert missing.returncode == 2
    assert "not found" in missing.stderr and "Traceback" not in missing.stderr


def test_missing_kaggle_credentials_name_both_ways(tmp_path: Path,
                                                   fake_kaggle: FakeKaggle) -> None:
    (tmp_path / "home").mkdir()
    env = kaggle_env(fake_kaggle, tmp_path / "home", tmp_path / "data", credentials=False)
    done = catsdogs("ingest", "--source", "kaggle:owner/pets", env=env)
    assert done.returncode == 2
    assert "KAGGLE_USERNAME" in done.stderr and "KAGGLE_KEY" in done.stderr
    assert "~/.kaggle/kaggle.json" in done.stderr
    assert fake_kaggle.requests == []


def test_interrupted_download_keeps_the_previous_raw(tmp_path: Path,
                                                     fake_kaggle: FakeKaggle) -> None:
    """Ingest once, then start a Kaggle download that stops half-way and interrupt it."""
    data = tmp_path / "data"
    (tmp_path / "home").mkdir()
    previous = write_tree(tmp_path / "old", {"cat/a.jpg": encode(noise_image(1), "JPEG"),
                                             "dog/b.jpg": encode(noise_image(2), "JPEG")})
    assert catsdogs("ingest", "--source", f"dir:{previous}", "--data-dir", str(data)
                    ).returncode == 0
    before = sorted((p.relative_to(data).as_posix(), p.read_bytes())
                    for p in (data / "raw").rglob("*") if p.is_file())

    big = write_tree(tmp_path / "PetImages", {
        f"{label}/{i}.jpg": encode(noise_image(i + (0 if label == "Cat" else 500), (300, 300)),
                                   "JPEG") for label in ("Cat", "Dog") for i in range(20)})
    fake_kaggle.datasets["owner/pets"] = zip_of(big)
    fake_kaggle.stall_after_half = True
    env = kaggle_env(fake_kaggle, tmp_path / "home", data)
    process = subprocess.Popen([str(CATSDOGS), "ingest", "--source", "kaggle:owner/pets"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert fake_kaggle.half_sent.wait(60), "the client never started the download"
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    after = sorted((p.relative_to(data).as_posix(), p.read_bytes())
                   for p in (data / "raw").rglob("*") if p.is_file())
    assert after == before
    assert [p.name for p in data.iterdir()] == ["raw"]  # no temporary folder left behind
