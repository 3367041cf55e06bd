"""Provenance: ingest records where the data came from and whether it is a generated stand-in
set (recognised by the generator's marker, not by its path); prepare and transform carry it, also
when they skip."""

from __future__ import annotations

import shutil
from pathlib import Path

from catsdogs.config import Params, load_params
from catsdogs.data import provenance
from catsdogs.data.synthetic import generate_dataset
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare, transform, validate
from tests.data.helpers import MESSY_OVERRIDES, REPO, zip_of


def _params() -> Params:
    return load_params(REPO / "params.yaml", ["validation.min_samples_per_class=5",
                                              "transform.image_size=32", *MESSY_OVERRIDES])


def _pipeline(paths: DataPaths, source: str, params: Params) -> list[bool]:
    """Run the four data stages; which of them skipped."""
    return [ingest.run(params, paths, source=source).skipped, validate.run(params, paths).skipped,
            prepare.run(params, paths).skipped, transform.run(params, paths).skipped]


def _recorded(paths: DataPaths) -> set[provenance.Provenance | None]:
    return {provenance.read(folder) for folder in (paths.raw, paths.prepared, paths.transformed)}


def test_generated_set_is_recorded_as_synthetic_through_the_pipeline(tmp_path: Path) -> None:
    params = _params()
    generated = generate_dataset(tmp_path / "anywhere", per_class=12, seed=3)
    paths = DataPaths(tmp_path / "data")
    summary = ingest.run(params, paths, source=f"dir:{generated}")
    assert "GENERATED" in summary.line() and summary.details["synthetic"] is True
    _pipeline(paths, f"dir:{generated}", params)
    assert _recorded(paths) == {provenance.Provenance(f"dir:{generated.resolve()}", True)}
    assert not (paths.raw / provenance.GENERATED_MARKER).exists()  # clutter, not data

    # the same pictures as real photos (no marker) under another path: the image outputs are
    # unchanged (validate, prepare, transform skip) but every output now says where its data came from
    copied = shutil.copytree(generated, tmp_path / "photos")
    (copied / provenance.GENERATED_MARKER).unlink()
    assert _pipeline(paths, f"dir:{copied}", params) == [False, True, True, True]
    assert _recorded(paths) == {provenance.Provenance(f"dir:{copied.resolve()}", False)}
    assert provenance.read(paths.transformed).note() == ""  # type: ignore[union-attr]


def test_archive_of_a_generated_set_is_synthetic(tmp_path: Path) -> None:
    generated = generate_dataset(tmp_path / "set", per_class=6)
    archive = tmp_path / "set.zip"
    archive.write_bytes(zip_of(generated))  # the marker sits one folder down in the archive
    paths = DataPaths(tmp_path / "data")
    ingest.run(_params(), paths, source=f"archive:{archive}")
    assert provenance.read(paths.raw) == provenance.Provenance(f"archive:{archive.resolve()}", True)


def test_raw_ingested_before_provenance_is_ingested_again(tmp_path: Path,
                                                          messy_dir: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    params = _params()
    ingest.run(params, paths, source=f"dir:{messy_dir}")
    assert provenance.read(paths.raw) == provenance.Provenance(f"dir:{messy_dir.resolve()}", False)
    assert ingest.run(params, paths, source=f"dir:{messy_dir}").skipped
    (paths.raw / provenance.PROVENANCE_NAME).unlink()  # what an older version left
    assert not ingest.run(params, paths, source=f"dir:{messy_dir}").skipped
    assert provenance.read(paths.raw) is not None
