"""Atomic outputs and idempotency stamps shared by every stage.

A stage writes into a temporary sibling of its output and renames it into place, so a killed
stage never leaves a half-written output. A stamp file records the fingerprint of the inputs and
params that produced the output; an unchanged fingerprint means the work can be skipped.

A killed stage (SIGKILL, OOM killer, a lost container) cannot remove its temporary sibling, so the
next write of the same output does. To tell a dead run's temporary from a live concurrent run's,
the writer holds an exclusive `flock` on its temporary for as long as it exists: the kernel drops
the lock when the writer dies, however it dies, across processes and containers sharing the
volume (a pid in the name would be reused, and means nothing in another pid namespace). Only
temporaries nobody holds are removed. `fcntl` is POSIX-only, like the rest of the pipeline.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

STAMP_NAME = ".stamp.json"
TEMP_MARK = ".tmp-"  # temporaries of output `x` are named `.x.tmp-*`


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts (file hashes, params fingerprints...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_stamp(output_dir: Path) -> str | None:
    try:
        return json.loads((output_dir / STAMP_NAME).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def is_up_to_date(output_dirs: list[Path], expected: str) -> bool:
    """True when every output dir exists and carries the expected fingerprint."""
    return all(read_stamp(directory) == expected for directory in output_dirs)


def write_stamp(directory: Path, value: str) -> None:
    (directory / STAMP_NAME).write_text(json.dumps({"fingerprint": value}))


def is_stamp(path: Path) -> bool:
    """True for a stage's internal stamp file (never part of what a stage reports or logs)."""
    return path.name == STAMP_NAME


def _try_lock(path: Path) -> int | None:
    """An open fd holding an exclusive flock on `path`; None when another process holds one.

    Raises FileNotFoundError when `path` is gone.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporaries of `target` (`.<name>.tmp-*` beside it) that no live process holds,
    i.e. those left by a killed run. Returns the removed paths."""
    removed = []
    for candidate in target.parent.glob(f".{glob.escape(target.name)}{TEMP_MARK}*"):
        try:
            fd = _try_lock(candidate)
        except OSError:  # gone meanwhile, or not ours to open: leave it
            continue
        if fd is None:  # a live run is writing it
            continue
        try:
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d temporary leftover(s) of an interrupted run: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def _claim(make: Callable[[], Path]) -> tuple[Path, int | None]:
    """A new temporary from `make()` and the fd holding its lock (None where the file system
    refuses locks, e.g. some NFS mounts: the temporary is then unlocked, and since a cleaner only
    removes what it can lock, nobody removes it while it is written).

    A cleaner in another process may lock and remove the fresh temporary before this process
    locks it; then another one is made.
    """
    while True:
        path = make()
        try:
            fd = _try_lock(path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # EBADF / ENOLCK / EOPNOTSUPP: no locks on this file system
            log.debug("no lock on %s (%s): writing it unlocked", path, exc)
            return path, None
        if fd is not None:
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return path, fd
            except FileNotFoundError:
                pass
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: Path, stamp: str | None = None) -> Iterator[Path]:
    """Yield a fresh temp dir next to `target`; on success it replaces `target` in one rename.

    On any exception the temp dir is removed and `target` is left exactly as it was. Temp dirs of
    `target` left by killed runs are removed first (see the module docstring).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp, lock = _claim(lambda: Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMP_MARK}",
                                                     dir=target.parent)))
    tmp.chmod(0o755)  # mkdtemp makes 0700; stage containers may run as another user
    try:
        yield tmp
        if stamp is not None:
            write_stamp(tmp, stamp)
        old = None
        if target.exists():
            # a temporary's name: if a kill lands between the two renames, the next run removes it
            old = target.with_name(f".{target.name}{TEMP_MARK}old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Path]:
    """Yield a temp path next to `target`; it is renamed onto `target` on success.

    Temp files of `target` left by killed runs are removed first (see the module docstring).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)

    def make() -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARK}", dir=target.parent)
        os.close(fd)
        return Path(name)

    tmp, lock = _claim(make)
    tmp.chmod(0o644)  # mkstemp makes 0600
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
