"""One registered version, read once: `VersionRecord`, `resolve` and what a version's tags record.

`resolve(client, "models:/NAME@champion")` asks the registry once and returns the version the
alias points at NOW as a record; from then on the caller works on `record.uri`
(`models:/NAME/N`), never on the alias again, so a promotion in the middle of an import or a
rollout cannot mix two versions. `register` is the other end: it logs and registers a trained
network and writes the tags the record reads (`version_tags`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from catsdogs.data.provenance import Provenance
from catsdogs.errors import UserError
from catsdogs.registry.integrity import download_verified, record_digest
from catsdogs.registry.names import (
    ARCH_TAG,
    CHALLENGER,
    CLASSES_TAG,
    IMAGE_SIZE_TAG,
    MODEL_ARTIFACT,
    MOVE_TAG_PREFIX,
)
from catsdogs.registry.safeload import load_network, save_weights
from catsdogs.tracking import raise_if_outage

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

URI_PREFIX = "models:/"


@dataclass(frozen=True)
class AliasMove:
    """One move of `@champion`: when (ISO-8601 UTC), from which version (None: the first
    champion) to which, why, and by what (`names.BY_*`: promote / rollback / post-deploy check).
    Recorded as a `champion.move.<UTC ms>` tag on both versions (`history.move_champion`)."""

    time: str
    from_version: str | None
    to_version: str
    reason: str
    by: str

    def line(self) -> str:
        """One human-readable line, as `catsdogs champion history` prints it."""
        source = f"v{self.from_version}" if self.from_version else "(none)"
        return f"{self.time}  {source:>7} -> v{self.to_version:<5} {self.by:<17} {self.reason}"


def recorded_moves(tags: Mapping[str, str]) -> dict[int, AliasMove]:
    """The moves of `@champion` recorded in one version's tags, by their time in UTC ms."""
    return {int(key.removeprefix(MOVE_TAG_PREFIX)): AliasMove(**json.loads(value))
            for key, value in tags.items() if key.startswith(MOVE_TAG_PREFIX)}


@dataclass(frozen=True)
class VersionRecord:
    """A registered model version as the registry held it when it was resolved.

    `version` is the registry's number as a string ("3"); `tags` all of the version's tags.
    The typed properties read the tags `register` writes; `image_size` and `classes` raise
    UserError for a version registered without them (not by `catsdogs train`).
    """

    name: str
    version: str
    run_id: str
    tags: Mapping[str, str]

    @classmethod
    def from_model_version(cls, found: Any) -> VersionRecord:
        """The record of an `mlflow.entities.model_registry.ModelVersion`."""
        return cls(name=found.name, version=str(found.version), run_id=found.run_id or "",
                   tags=dict(found.tags or {}))

    @property
    def uri(self) -> str:
        """`models:/NAME/VERSION`: this version, whatever the aliases do later."""
        return f"{URI_PREFIX}{self.name}/{self.version}"

    def _required(self, tag: str) -> str:
        try:
            return self.tags[tag]
        except KeyError:
            raise UserError(f"{self.name} v{self.version} has no `{tag}` tag: it was not "
                            "registered by `catsdogs train`") from None

    @property
    def image_size(self) -> int:
        """Side of the square input the network was trained on, in pixels."""
        return int(self._required(IMAGE_SIZE_TAG))

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in the network's output order."""
        return tuple(json.loads(self._required(CLASSES_TAG)))

    @property
    def arch(self) -> str | None:
        """The torchvision architecture (None when not tagged)."""
        return self.tags.get(ARCH_TAG) or None

    @property
    def data(self) -> Provenance | None:
        """What the version was trained on (None for versions registered before `data.*`)."""
        return Provenance.from_tags(dict(self.tags))

    @property
    def moves(self) -> list[AliasMove]:
        """The moves of `@champion` to or from this version, oldest first."""
        found = recorded_moves(self.tags)
        return [found[key] for key in sorted(found)]


def resolve(client: MlflowClient, uri: str) -> VersionRecord:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> the record of that version, asking the
    registry once. Raises UserError for another URI form or a model, alias or version the
    registry does not have, and `MlflowUnavailable` (never "not found") when the server does not
    answer."""
    from mlflow.exceptions import MlflowException

    if not uri.startswith(URI_PREFIX):
        raise UserError(f"model {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    ref = uri[len(URI_PREFIX):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            found = client.get_model_version_by_alias(name, alias)
        else:
            name, number = ref.rsplit("/", 1)
            found = client.get_model_version(name, number)
    except (MlflowException, ValueError) as exc:
        raise_if_outage(exc, f"resolving {uri}")
        raise UserError(f"model {uri!r} not found in the registry ({exc}); train and promote "
                        "one first (`catsdogs train`, `catsdogs promote`)") from None
    return VersionRecord.from_model_version(found)


def find(client: MlflowClient, name: str, alias: str) -> VersionRecord | None:
    """The record of the version `name@alias` points at, or None when the alias (or the model)
    does not exist; `MlflowUnavailable` when the server does not answer."""
    from mlflow.exceptions import MlflowException

    try:
        return VersionRecord.from_model_version(client.get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        raise_if_outage(exc, f"looking up {name}@{alias}")
        return None


def version_tags(image_size: int, classes: tuple[str, ...], arch: str,
                 data: Provenance | None = None) -> dict[str, str]:
    """The tags `register` puts on a version for its consumers (service, evaluate, promote, the
    demo summary): image size, classes, arch and, when known, `data.source`/`data.synthetic`."""
    return ({IMAGE_SIZE_TAG: str(image_size), CLASSES_TAG: json.dumps(list(classes)),
             ARCH_TAG: arch} | (data.tags() if data is not None else {}))


def _requirements() -> list[str]:
    """The model's runtime requirements, stated (MLflow's inference of them takes ~20 s)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "torchvision", "cloudpickle")]


def register(model: Any, name: str, example: Any, tags: dict[str, str]) -> VersionRecord:
    """Log `model` (a torch module) once in the active run (MLflow's pickle format, dynamic
    batch, plus its state dict as safetensors: `safeload.WEIGHTS_PATH`, what every loader
    reads; `example`: a float32 array of shape (N, 3, H, W)), register it as a new version of
    `name`, tag it with `tags` (`version_tags`) and its artifact's sha256
    (`integrity.record_digest`, checked before any load), and point `challenger` at it.
    Returns its record."""
    import tempfile
    from pathlib import Path

    import mlflow.pytorch
    import torch
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    with torch.inference_mode():
        logits = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, logits)
    with tempfile.TemporaryDirectory(prefix="catsdogs-weights-") as folder:
        info = mlflow.pytorch.log_model(
            model, name=MODEL_ARTIFACT, signature=signature, input_example=example,
            serialization_format="pickle", registered_model_name=name,
            pip_requirements=_requirements(),
            extra_files=[str(save_weights(model, Path(folder)))],
            metadata={IMAGE_SIZE_TAG: int(tags[IMAGE_SIZE_TAG]),
                      CLASSES_TAG: json.loads(tags[CLASSES_TAG])},
        )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    with tempfile.TemporaryDirectory(prefix="catsdogs-digest-") as folder:
        record_digest(client, name, version, Path(folder))
    client.set_registered_model_alias(name, CHALLENGER, version)
    log.info("registered %s version %s as @%s", name, version, CHALLENGER)
    return VersionRecord.from_model_version(client.get_model_version(name, version))


def load_model(record: VersionRecord, device: Any) -> Any:
    """The registered torch module of `record` (by its number, not an alias), in eval mode on
    `device` (a torch.device), loaded from its artifact once verified against the sha256
    recorded at registration, as its architecture built from code with its safetensors weights
    (`safeload.load_network`: nothing unpickled). Raises UserError naming the version when the
    digest does not match or the version cannot be loaded without unpickling it."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="catsdogs-model-") as folder:
        local = download_verified(record, Path(folder))
        return load_network(local, name=record.name, version=record.version, arch=record.arch,
                            classes=len(record.classes), device=device)
