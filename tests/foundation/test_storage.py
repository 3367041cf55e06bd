"""Atomic outputs: a failure leaves the previous output untouched; stamps drive skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs.storage import atomic_dir, atomic_file, is_up_to_date, read_stamp


def test_atomic_dir_replaces_output_and_stamps(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target, stamp="abc") as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    assert read_stamp(target) == "abc" and is_up_to_date([target], "abc")
    assert not is_up_to_date([target], "other")
    with atomic_dir(target, stamp="def") as tmp:
        (tmp / "b.txt").write_text("two")
    assert not (target / "a.txt").exists() and (target / "b.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_failure_keeps_previous_output(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target, stamp="abc") as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_dir(target, stamp="new") as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed half-way")
    assert (target / "a.txt").read_text() == "one" and not (target / "half.txt").exists()
    assert read_stamp(target) == "abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file(tmp_path: Path) -> None:
    target = tmp_path / "f.csv"
    with atomic_file(target) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"
    with pytest.raises(ValueError), atomic_file(target) as tmp:
        tmp.write_text("broken")
        raise ValueError
    assert target.read_text() == "x" and sorted(tmp_path.iterdir()) == [target]
