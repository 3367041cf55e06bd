"""Atomic outputs and idempotency stamps shared by every stage.

A stage writes into a temporary sibling of its output and renames it into place, so a killed
stage never leaves a half-written output. A stamp file records the fingerprint of the inputs and
params that produced the output; an unchanged fingerprint means the work can be skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

STAMP_NAME = ".stamp.json"


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


@contextlib.contextmanager
def atomic_dir(target: Path, stamp: str | None = None) -> Iterator[Path]:
    """Yield a fresh temp dir next to `target`; on success it replaces `target` in one rename.

    On any exception the temp dir is removed and `target` is left exactly as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; stage containers may run as another user
    try:
        yield tmp
        if stamp is not None:
            write_stamp(tmp, stamp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Path]:
    """Yield a temp path next to `target`; it is renamed onto `target` on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o644)  # mkstemp makes 0600
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
