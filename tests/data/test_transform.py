"""Transform: every mode to RGB at image_size, stratified seeded split, determinism, idempotency."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catsdogs.config import Params, load_params
from catsdogs.data.synthetic import generate_dataset
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare, transform, validate
from catsdogs.stages.transform import assign_splits
from tests.data.helpers import CATSDOGS, MESSY_KEPT, MESSY_OVERRIDES, REPO


def _params(*extra: str) -> Params:
    return load_params(REPO / "params.yaml", ["validation.min_samples_per_class=5",
                                              "transform.image_size=64", *MESSY_OVERRIDES,
                                              *extra])


def _chain(source: Path, paths: DataPaths, params: Params) -> list[dict[str, str]]:
    ingest.run(params, paths, source=f"dir:{source}")
    validate.run(params, paths)
    prepare.run(params, paths)
    transform.run(params, paths)
    with paths.splits_csv.open() as handle:
        return list(csv.DictReader(handle))


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".stamp.json"):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_messy_images_become_a_clean_square_rgb_split(messy_dir: Path, tmp_path: Path) -> None:
    params = _params()
    first = DataPaths(tmp_path / "one")
    rows = _chain(messy_dir, first, params)
    assert list(rows[0]) == ["path", "split", "label", "source"]
    assert Counter(row["label"] for row in rows) == MESSY_KEPT
    for row in rows:
        output = first.transformed / row["path"]
        assert row["path"].startswith(f"{row['split']}/{row['label']}/")
        assert (first.prepared / row["source"]).is_file()
        with Image.open(output) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
    sources = {row["source"] for row in rows}
    assert {"cat/mode_cmyk.jpg", "cat/sixteen_bit.png", "cat/mode_la.png",
            "dog/mode_p_transparent.png", "cat/rotated.jpg"} <= sources
    # png and jpg outputs never clash: every output name is unique
    assert len({row["path"] for row in rows}) == len(rows)

    # determinism: the same input in another data dir gives byte-identical outputs
    second = DataPaths(tmp_path / "two")
    _chain(messy_dir, second, params)
    assert first.splits_csv.read_bytes() == second.splits_csv.read_bytes()
    assert _tree_digest(first.transformed) == _tree_digest(second.transformed)

    # idempotent: unchanged inputs and params skip; a new seed re-splits
    assert transform.run(params, first).skipped
    reseeded = _params("split.seed=7")
    validate.run(reseeded, first)
    prepare.run(reseeded, first)
    assert not transform.run(reseeded, first).skipped
    assert first.splits_csv.read_bytes() != second.splits_csv.read_bytes()


@pytest.mark.parametrize("count", [1000, 57, 3])
def test_split_is_stratified_and_seeded(count: int) -> None:
    params = load_params(REPO / "params.yaml")
    rows = [{"path": f"{label}/{i}.jpg", "label": label, "sha256": f"{i}"}
            for label in ("cat", "dog") for i in range(count)]
    assigned = assign_splits(rows, params)
    assert assigned == assign_splits(list(reversed(rows)), params)
    per = Counter((split, row["label"]) for split, row in assigned)
    for label in ("cat", "dog"):
        for split, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            assert abs(per[(split, label)] - count * fraction) <= 1


def _session_members(session: int) -> list[str]:
    """`pid state command` of every live (non-zombie) process in a session."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
        except OSError:  # ended meanwhile
            continue
        fields = rest.split()
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(f"{stat.parent.name} {fields[0]} {head.partition('(')[2]}")
    return members


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_sigkilled_transform_leaves_no_processes_and_next_run_cleans_up(tmp_path: Path) -> None:
    """A real SIGKILL of a real `catsdogs transform` in the middle of its process pool."""
    params = load_params(REPO / "params.yaml")
    paths = DataPaths(tmp_path / "data")
    ingest.run(params, paths, source=f"dir:{generate_dataset(tmp_path / 'images', 400)}")
    validate.run(params, paths)
    prepare.run(params, paths)
    command = [str(CATSDOGS), "transform", "--data-dir", str(paths.root),
               "--set", "transform.workers=2", "--set", "transform.image_size=160"]
    temporaries = lambda: list(paths.root.glob(".transformed.tmp-*"))  # noqa: E731
    written = lambda: [p for t in temporaries() for p in t.glob("*/*/*.jpg")]  # noqa: E731

    stage = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: len(written()) > 0, timeout=120), "no output appeared"
        pool = _session_members(stage.pid)
        os.kill(stage.pid, signal.SIGKILL)
    finally:
        stage.kill()
        stage.wait()
    assert not paths.transformed.exists(), "the run finished before the kill: not mid-run"
    assert len(pool) >= 4, pool  # the stage, the fork server, two workers (+ resource tracker)
    assert _wait_until(lambda: not _session_members(stage.pid), timeout=30), \
        f"left behind after SIGKILL: {_session_members(stage.pid)}"
    assert len(temporaries()) == 1  # the half-written output a kill leaves

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert temporaries() == []
    with paths.splits_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 800 and all((paths.transformed / r["path"]).is_file() for r in rows)


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("150000 100000", 2),        # a 1.5-CPU container or pod limit: two workers, not one per core
    ("100000 100000", 1),
    ("max 100000", None),         # no limit: every usable core
    (None, None),                 # no cgroup v2 file (cgroup v1, not Linux)
])
def test_workers_follow_the_cgroup_cpu_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             cpu_max: str | None, expected: int | None) -> None:
    from catsdogs.data import parallel

    cores = len(os.sched_getaffinity(0))
    limit_file = tmp_path / "cpu.max"
    if cpu_max is not None:
        limit_file.write_text(cpu_max + "\n")
    monkeypatch.setattr(parallel, "CGROUP_CPU_MAX", limit_file)
    assert parallel.worker_count() == (cores if expected is None else min(cores, expected))
    assert parallel.worker_count(3) == 3          # an explicit transform.workers wins
