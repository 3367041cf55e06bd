"""Ingest sources (`kaggle:OWNER/DATASET`, `dir:PATH`, `archive:PATH`) and layout normalisation.

Whatever the layout (`PetImages/Cat/1.jpg`, `train/cats/x.jpg`, `train/cat.123.jpg`), each file's
label comes from the deepest folder named after a class (any case, singular or plural), else from
the first word of its file name (`cat.123.jpg`, `dog_7.png`). Unlabelled files and OS clutter
(`Thumbs.db`, `.DS_Store`, `__MACOSX/`, hidden files) are left out and counted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from catsdogs.console import progress
from catsdogs.errors import UserError

log = logging.getLogger(__name__)

KINDS = ("kaggle", "dir", "archive")
JUNK_NAMES = {"thumbs.db", ".ds_store", "desktop.ini"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_WORD = re.compile(r"[._\-\s]+")


@dataclass
class Scan:
    """Labelled files found under a root, and what was left out."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def parse_source(text: str) -> tuple[str, str]:
    """`kind:value`; a bare `OWNER/DATASET` means Kaggle."""
    kind, sep, value = text.partition(":")
    if not sep:
        kind, value = "kaggle", text
    kind = kind.strip().lower()
    value = value.strip()
    if kind not in KINDS or not value:
        raise UserError(f"data source {text!r} not understood: use kaggle:OWNER/DATASET, "
                        "dir:PATH (a folder of class sub-folders) or archive:PATH (zip or tar)")
    if kind == "kaggle" and value.count("/") != 1:
        raise UserError(f"Kaggle dataset {value!r} must look like OWNER/DATASET, e.g. "
                        "kaggle:bhavikjikadara/dog-and-cat-classification-dataset")
    return kind, value


def _aliases(classes: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for label in classes:
        names[label.lower()] = label
        names[f"{label.lower()}s"] = label
    return names


def label_for(relative: Path, classes: list[str]) -> str | None:
    """The class a file belongs to, from its folders (deepest first) or its file name."""
    names = _aliases(classes)
    for part in reversed(relative.parts[:-1]):
        if part.lower() in names:
            return names[part.lower()]
    first = _WORD.split(relative.name.lower(), maxsplit=1)[0]
    return names.get(first)


def _is_junk(relative: Path) -> bool:
    return (relative.name.lower() in JUNK_NAMES
            or any(part.startswith(".") or part == "__MACOSX" for part in relative.parts))


def is_clutter(relative: Path) -> bool:
    """OS clutter or a hidden file or folder (left out of every scan of pictures)."""
    return _is_junk(relative)


def scan(root: Path, classes: list[str]) -> Scan:
    """Every labelled regular file under `root`, in a stable (sorted) order."""
    found = Scan()
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory, name)
            relative = path.relative_to(root)
            if _is_junk(relative) or not path.is_file():
                found.skipped["clutter"] += 1
                continue
            label = label_for(relative, classes)
            if label is None:
                found.skipped["unlabelled"] += 1
                continue
            found.files.append((path, label))
    return found


def listing_fingerprint(root: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file: cheap change detection for a `dir:` source."""
    entries = []
    for directory, _subdirs, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            stat = path.stat()
            entries.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(entries)


def _unique_name(name: str, taken: set[str]) -> str:
    stem, suffix = os.path.splitext(name)
    candidate, number = name, 1
    while candidate.lower() in taken:
        number += 1
        candidate = f"{stem}-{number}{suffix}"
    taken.add(candidate.lower())
    return candidate


def place_files(found: Scan, target: Path, move: bool) -> list[dict[str, object]]:
    """Copy (or move) labelled files into `target/<label>/`; manifest rows for them."""
    rows: list[dict[str, object]] = []
    taken: dict[str, set[str]] = {}
    for source, label in progress(found.files, desc="ingest", total=len(found.files)):
        folder = target / label
        folder.mkdir(exist_ok=True)
        name = _unique_name(source.name, taken.setdefault(label, set()))
        destination = folder / name
        data = source.read_bytes()
        if move:
            os.replace(source, destination)
        else:
            destination.write_bytes(data)
        rows.append({"path": f"{label}/{name}", "label": label, "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()})
    return rows


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar (any compression) into `dest`, refusing paths outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                bundle.extractall(dest, filter="data")
        else:
            raise UserError(f"{archive} is neither a zip nor a tar archive: point archive: at a "
                            ".zip/.tar/.tar.gz file, or use dir: for a folder")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"cannot unpack {archive}: {exc}; download it again") from exc


def extract_nested(root: Path) -> None:
    """Unpack archives found inside an unpacked download (e.g. a `train.zip` in the dataset)."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_archive(p)):
        log.info("unpacking nested archive %s", path.relative_to(root))
        extract_archive(path, path.with_name(path.name + ".d"))
        path.unlink()
