"""Atomic outputs: a failure leaves the previous output untouched; stamps drive skipping."""

from __future__ import annotations

import os
import subprocess
import sys
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


_WRITER = """
import sys
from pathlib import Path
from catsdogs.storage import atomic_dir, atomic_file
target = Path(sys.argv[2])
with (atomic_dir if sys.argv[1] == "dir" else atomic_file)(target) as tmp:
    (tmp / "from-child.txt" if sys.argv[1] == "dir" else tmp).write_text("child")
    print("ready", flush=True)
    sys.stdin.readline()
"""


def _writer(kind: str, target: Path) -> subprocess.Popen[str]:
    """A real process inside atomic_dir/atomic_file for `target`, paused until it reads a line."""
    process = subprocess.Popen([sys.executable, "-c", _WRITER, kind, str(target)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _temporaries(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_killed_writer_leftovers_are_removed_live_ones_kept(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out"
    context = atomic_dir if kind == "dir" else atomic_file

    def write_here(text: str) -> None:
        with context(target) as tmp:
            (tmp / "a.txt" if kind == "dir" else tmp).write_text(text)

    live = _writer(kind, target)
    live_temp = _temporaries(target)
    killed = _writer(kind, target)  # starting, it leaves the live writer's temporary alone
    killed.kill()  # SIGKILL: no cleanup code runs
    killed.wait()
    assert len(_temporaries(target)) == 2 and set(live_temp) < set(_temporaries(target))
    write_here("parent")  # removes the killed writer's temporary, not the live one's
    assert _temporaries(target) == live_temp
    assert live.communicate("go\n", timeout=60)[1] is None and live.returncode == 0
    assert _temporaries(target) == []
    assert (target / "from-child.txt" if kind == "dir" else target).read_text() == "child"
    write_here("again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_writes_go_on_where_the_file_system_refuses_locks(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Some NFS mounts answer flock with EBADF/ENOLCK: outputs are still written atomically, and
    nothing unlockable is removed as "stale"."""
    import errno
    import fcntl

    from catsdogs import storage

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    leftover = tmp_path / f".out{storage.TEMP_MARK}killed"
    leftover.mkdir()
    monkeypatch.setattr(fcntl, "flock", refuse)
    with storage.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    with storage.atomic_file(tmp_path / "f.txt") as tmp:
        tmp.write_text("f")
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    assert (tmp_path / "f.txt").read_text() == "f"
    assert leftover.is_dir()          # could not be locked, so it was not judged stale
