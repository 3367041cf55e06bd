"""A model is verified before anything loads it: the sha256 of its artifact, recorded when it is
registered, is checked on every download that leads to loading it.

`register` (record.py) downloads the version it has just registered and tags it `model.sha256`
(`DIGEST_TAG`) with `tree_digest` of the folder. `download_verified` is the only way the loaders
(`record.load_model`: promote, evaluate, score; `bentoservice.import_model`: the Bento store and
every deploy's image) fetch a version: it downloads into a folder, recomputes the digest and
raises UserError naming the version when it differs or was never recorded, before any of it is
read (`safeload` then reads only its safetensors weights, never the pickle). Who can rewrite the
artifact store (the MLflow volume, a bucket) but not the registry's tags cannot get their model
served; the registry itself is behind MLflow's login.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from catsdogs.errors import UserError
from catsdogs.registry.names import DIGEST_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class Version(Protocol):
    """What the check needs of a registered version (`record.VersionRecord` is one)."""

    name: str
    version: str
    tags: Mapping[str, str]

    @property
    def uri(self) -> str: ...


def tree_digest(folder: Path) -> str:
    """sha256 (hex, 64 characters) of every file under `folder`: each file's relative POSIX path
    and its own sha256, in path order, so a renamed, added, removed or changed file changes it.
    Raises FileNotFoundError when `folder` is not a directory."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    tree = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = hashlib.sha256()
        with file.open("rb") as fh:
            while block := fh.read(_CHUNK):
                content.update(block)
        tree.update(f"{file.relative_to(folder).as_posix()}\0{content.hexdigest()}\n".encode())
    return tree.hexdigest()


def _download(uri: str, folder: Path) -> Path:
    import mlflow.artifacts

    folder.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))


def record_digest(client: MlflowClient, name: str, version: str, folder: Path) -> str:
    """Download `models:/name/version` into `folder`, tag the version with its tree digest
    (`DIGEST_TAG`); the digest."""
    digest = tree_digest(_download(f"models:/{name}/{version}", folder))
    client.set_model_version_tag(name, version, DIGEST_TAG, digest)
    return digest


def download_verified(record: Version, folder: Path) -> Path:
    """`record`'s model artifact downloaded under `folder` and checked against the digest
    recorded at registration; the local model folder (pass it to the loader, never the URI
    again: what is loaded is what was checked). Raises UserError naming the version when the
    digest differs (tampered or corrupted) or the version has none (not registered by
    `catsdogs train`)."""
    expected = record.tags.get(DIGEST_TAG)
    if not expected:
        raise UserError(f"{record.name} v{record.version} has no `{DIGEST_TAG}` tag: its "
                        "artifact cannot be verified, so it is not loaded (register it with "
                        "`catsdogs train`)")
    local = _download(record.uri, folder)
    actual = tree_digest(local)
    if actual != expected:
        raise UserError(f"{record.name} v{record.version} refused: its model artifact's sha256 "
                        f"{actual[:16]}... differs from the one recorded at registration "
                        f"({expected[:16]}...): the artifact was changed after registration "
                        "(tampered or corrupted); nothing of it was loaded")
    log.info("%s v%s: model artifact verified (sha256 %s...)", record.name, record.version,
             actual[:16])
    return local
