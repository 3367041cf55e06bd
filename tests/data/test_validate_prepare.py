"""Validate (the Great Expectations gate) and prepare (screening + EDA) on generated images."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from catsdogs.config import Params, load_params
from catsdogs.errors import GateFailed, UserError
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare, validate
from tests.data.helpers import (
    EXPECTED_DROPS,
    MESSY_KEPT,
    MESSY_OVERRIDES,
    REPO,
    encode,
    noise_image,
    write_tree,
)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def messy_params() -> Params:
    return load_params(REPO / "params.yaml", ["validation.min_samples_per_class=5",
                                              *MESSY_OVERRIDES])


def test_messy_data_passes_the_gate_and_prepare_drops_every_bad_kind(
        messy_dir: Path, messy_params: Params, data_paths: DataPaths) -> None:
    ingest.run(messy_params, data_paths, source=f"dir:{messy_dir}")
    summary = validate.run(messy_params, data_paths)
    reports = data_paths.validation_reports
    assert (reports / "data_docs" / "index.html").is_file()
    assert list((reports / "data_docs" / "validations").rglob("*.html"))
    result = json.loads((reports / "gx_result.json").read_text())
    assert {r["suite_name"]: r["success"] for r in result} == {"raw_files": True,
                                                                 "raw_classes": True}
    facts = json.loads((reports / "summary.json").read_text())
    assert facts["success"] is True and facts["files"] == 36 and facts["decodable"] == 32
    assert summary.details["expectations"] == facts["expectations"] == 9

    prepared = prepare.run(messy_params, data_paths)
    dropped = _csv(data_paths.prepared / "dropped.csv")
    assert Counter(row["reason"] for row in dropped) == EXPECTED_DROPS
    assert {row["path"] for row in dropped if row["reason"] == "label_conflict"} == {
        "cat/both_labels.jpg", "dog/both_labels.jpg"}
    duplicate = next(row for row in dropped if row["reason"] == "duplicate")
    assert duplicate["path"] == "cat/original_copy.jpg" and "cat/original.jpg" in duplicate["detail"]
    kept = _csv(data_paths.prepared_manifest)
    assert Counter(row["label"] for row in kept) == MESSY_KEPT
    assert all((data_paths.prepared / row["path"]).is_file() for row in kept)
    assert prepared.details["kept"] == sum(MESSY_KEPT.values())
    for name in ("class_distribution.png", "image_dimensions.png", "sample_grid.png"):
        assert (data_paths.eda / name).stat().st_size > 1000
    eda = json.loads((data_paths.eda / "eda.json").read_text())
    assert eda["kept_per_class"] == MESSY_KEPT and eda["dropped_by_reason"] == EXPECTED_DROPS

    assert validate.run(messy_params, data_paths).skipped
    assert prepare.run(messy_params, data_paths).skipped


def test_gate_fails_with_a_table_of_failed_expectations(tmp_path: Path, params: Params,
                                                        data_paths: DataPaths) -> None:
    files = {f"cat/{i}.jpg": encode(noise_image(i), "JPEG") for i in range(8)}
    files["cat/tiny.jpg"] = encode(noise_image(99, (10, 10)), "JPEG")
    files |= {f"dog/{i}.gif": encode(noise_image(100 + i, mode="P"), "GIF") for i in range(2)}
    files |= {f"dog/{i}.jpg": b"broken" for i in range(2)}
    ingest.run(params, data_paths, source=f"dir:{write_tree(tmp_path / 'src', files)}")
    with pytest.raises(GateFailed) as failed:
        validate.run(params, data_paths)
    message = str(failed.value)
    failed_columns = {line.split()[1] for line in message.splitlines()
                      if line.startswith("expect_")}
    assert failed_columns == {"extension", "decodable", "width", "height", "count", "imbalance"}
    assert "expect_column_values_to_be_in_set" in message
    summary = json.loads((data_paths.validation_reports / "summary.json").read_text())
    assert summary["success"] is False and len(summary["failed"]) == 6
    assert (data_paths.validation_reports / "data_docs" / "index.html").is_file()
    # the gate holds: prepare refuses, and so does a re-run of validate
    with pytest.raises(GateFailed):
        prepare.run(params, data_paths)
    with pytest.raises(GateFailed):
        validate.run(params, data_paths)


def test_prepare_needs_a_passed_validation(tmp_path: Path, params: Params,
                                           data_paths: DataPaths) -> None:
    with pytest.raises(UserError, match="catsdogs ingest"):
        prepare.run(params, data_paths)
    files = {f"{label}/{i}.jpg": encode(noise_image(i + 50 * n), "JPEG")
             for n, label in enumerate(("cat", "dog")) for i in range(6)}
    ingest.run(params, data_paths, source=f"dir:{write_tree(tmp_path / 'src', files)}")
    with pytest.raises(UserError, match="catsdogs validate"):
        prepare.run(params, data_paths)


def test_each_raw_picture_is_decoded_once(messy_dir: Path, messy_params: Params,
                                          data_paths: DataPaths,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Validate decodes every raw file and keeps its per-file table; prepare reads that table
    (decoding nothing) and drops exactly what the table says."""
    import catsdogs.data.probe as probe

    ingest.run(messy_params, data_paths, source=f"dir:{messy_dir}")
    validate.run(messy_params, data_paths)
    table = _csv(data_paths.validation_reports / "files.csv")
    assert len(table) == 36 and sum(row["decodable"] == "True" for row in table) == 32

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare decoded the raw pictures again")

    monkeypatch.setattr(probe, "probe_all", no_decoding)
    monkeypatch.setattr(probe, "probe", no_decoding)
    prepare.run(messy_params, data_paths)
    dropped = _csv(data_paths.prepared / "dropped.csv")
    assert Counter(row["reason"] for row in dropped) == EXPECTED_DROPS
    undecodable = {row["path"]: row["reason"] for row in table if row["decodable"] == "False"}
    assert {row["path"]: row["reason"] for row in dropped if row["path"] in undecodable} \
        == undecodable
