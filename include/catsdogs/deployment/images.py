"""Cheap per-version service images: the runtime image (docker/service/Dockerfile: the worker
image's torch and dependency layers + BentoML + the service code, built once by
scripts/docker-images.sh) plus ONE layer holding the version in the Bento model store.

`model_image` runs a container of the runtime image that imports `models:/<name>/<version>` from
the MLflow server into its Bento model store (bentoservice.import_model, building and measuring
the serving variants on the data volume's test pictures), then `docker commit`s it with `CATSDOGS_BENTO_MODEL` set to the
imported tag and the runtime's command restored. Only that layer (the model's weights and
metadata, megabytes) is new: no `bentoml containerize`, no torch layer rebuilt. The image serves
with no MLflow server (Kubernetes, air-gapped hosts). An image already built for the version is
reused as is.

The import logs in to MLflow with the caller's credentials (`secret_env`): they are copied into
the container as a file its script reads and deletes before the import, so they are neither in
the container's configuration (`docker inspect`, and a commit keeps the container's
environment in the image) nor in the committed layer.
"""

from __future__ import annotations

import io
import json
import logging
import shlex
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catsdogs.deployment.release import Release
from catsdogs.deployment.service_entry import IMPORT_MODEL
from catsdogs.errors import UserError

log = logging.getLogger(__name__)

VERSION_LABEL = "org.catsdogs.model.version"
NAME_LABEL = "org.catsdogs.model.name"
IMPORT_HOME = "/tmp/catsdogs-import"
# The import container's credentials file (sourced, then deleted, by import_command's script).
SECRET_FILE = "/tmp/.catsdogs-import-secrets"


@dataclass(frozen=True)
class ModelImage:
    """A per-version image: its reference, the Bento model tag inside, whether it was reused,
    the seconds its build took and the bytes it adds over the runtime image."""

    image: str
    bento_tag: str
    reused: bool
    build_s: float
    bytes_added: int

    def facts(self) -> dict[str, Any]:
        return {"image": self.image, "bento_tag": self.bento_tag, "image_reused": self.reused,
                "image_build_s": round(self.build_s, 1), "image_bytes_added": self.bytes_added}


def image_name(template: str, version: str) -> str:
    """`template` with `{version}` filled in (e.g. catsdogs-service:v{version} -> ...:v7)."""
    if "{version}" not in template:
        raise UserError(f"CATSDOGS_MODEL_IMAGE={template!r} must contain {{version}} "
                        "(e.g. catsdogs-service:v{version})")
    return template.format(version=version)


def secret_script(path: str = SECRET_FILE) -> str:
    """Shell that exports the variables of the file at `path` (when present) and deletes it."""
    return f"if [ -f {path} ]; then set -a; . {path}; set +a; rm -f {path}; fi"


def secret_archive(values: Mapping[str, str], uid: int) -> bytes:
    """A tar holding SECRET_FILE's name: `NAME='value'` lines (shell-quoted), mode 600, owned by
    `uid` (the container's user, who must read and delete it in the sticky /tmp)."""
    body = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items()).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(SECRET_FILE.rsplit("/", 1)[1])
        info.size, info.mode, info.uid, info.gid = len(body), 0o600, uid, 0
        tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def _user_id(config: Mapping[str, Any]) -> int:
    """The numeric uid of an image configuration's `User` ("50000", "50000:0"; else root)."""
    user = str(config.get("User") or "0").split(":", 1)[0]
    return int(user) if user.isdigit() else 0


def import_command(release: Release) -> list[str]:
    """The import container's command: read and delete its credentials file, import into a
    scratch Bento home, move the model into the image's store, print the import summary (JSON,
    with the Bento `tag`) last."""
    script = (
        f"set -e; {secret_script()}; BENTOML_HOME={IMPORT_HOME} python -m {IMPORT_MODEL} "
        f"--model-uri {release.model_uri} --data-dir /data --calibration-images 200 --json "
        f"> {IMPORT_HOME}.json; mkdir -p \"$BENTOML_HOME/models\"; "
        f"cp -r {IMPORT_HOME}/models/. \"$BENTOML_HOME/models/\"; rm -rf {IMPORT_HOME}; "
        f"tail -1 {IMPORT_HOME}.json; rm -f {IMPORT_HOME}.json")
    return ["sh", "-c", script]


def _config_changes(runtime: Any, bento_tag: str, release: Release) -> list[str]:
    """Dockerfile instructions for the commit: the runtime's entrypoint and command back, the
    model tag and version labels added."""
    config = runtime.attrs["Config"]
    changes = [f"ENV CATSDOGS_BENTO_MODEL={bento_tag}",
               f"LABEL {VERSION_LABEL}={release.version} {NAME_LABEL}={release.name}",
               f"CMD {json.dumps(config.get('Cmd') or [])}",
               f"USER {config.get('User') or '0'}",
               f"WORKDIR {config.get('WorkingDir') or '/'}"]
    if config.get("Entrypoint"):
        changes.append(f"ENTRYPOINT {json.dumps(config['Entrypoint'])}")
    return changes


def model_image(docker: Any, runtime_image: str, template: str, release: Release, *,
                network: str, environment: dict[str, str], data_volume: str | None,
                secret_env: Mapping[str, str] | None = None,
                timeout_s: float = 900) -> ModelImage:
    """The version's image, built from `runtime_image` when it does not exist yet.

    `docker` is a `docker.DockerClient`; the import container joins `network` (to reach MLflow)
    with `environment` (MLFLOW_TRACKING_URI...), `secret_env` (the MLflow login; through a file,
    see the module docstring) and `data_volume` read-only at /data. Raises UserError when the
    runtime image is missing or the import fails (its log's tail quoted)."""
    import docker as docker_sdk

    name = image_name(template, release.version)
    try:
        existing = docker.images.get(name)
        if existing.labels.get(VERSION_LABEL) == release.version:
            env = dict(item.split("=", 1) for item in existing.attrs["Config"].get("Env") or [])
            return ModelImage(name, env.get("CATSDOGS_BENTO_MODEL", ""), True, 0.0, 0)
    except docker_sdk.errors.ImageNotFound:
        pass
    try:
        runtime = docker.images.get(runtime_image)
    except docker_sdk.errors.ImageNotFound:
        raise UserError(f"the service runtime image {runtime_image} is missing: build it once "
                        "with `make images` (scripts/docker-images.sh builds "
                        "docker/service/Dockerfile)") from None
    started = time.monotonic()
    volumes = {data_volume: {"bind": "/data", "mode": "ro"}} if data_volume else {}
    container = docker.containers.create(
        runtime_image, command=import_command(release), entrypoint=[], network=network,
        environment=environment, volumes=volumes, labels={"org.catsdogs.role": "model-import"})
    try:
        if secret_env:
            container.put_archive(SECRET_FILE.rsplit("/", 1)[0],
                                  secret_archive(secret_env, _user_id(runtime.attrs["Config"])))
        container.start()
        outcome = container.wait(timeout=timeout_s)
        output = container.logs().decode(errors="replace").strip()
        if outcome.get("StatusCode") != 0:
            raise UserError(f"importing {release.model_uri} into {runtime_image} failed "
                            f"(exit {outcome.get('StatusCode')}): {output[-1500:]}")
        try:
            bento_tag = str(json.loads(output.splitlines()[-1])["tag"])
        except (IndexError, KeyError, ValueError):
            raise UserError(f"the import of {release.model_uri} printed no summary: "
                            f"{output[-1500:]}") from None
        repository, _, tag = name.rpartition(":")
        image = container.commit(repository=repository or name, tag=tag or "latest",
                                 changes=_config_changes(runtime, bento_tag, release))
    finally:
        container.remove(force=True)
    image.reload()
    added = int(image.attrs["Size"]) - int(runtime.attrs["Size"])
    seconds = time.monotonic() - started
    log.info("built %s on %s in %.1f s: %d bytes added (one layer, Bento model %s)", name,
             runtime_image, seconds, added, bento_tag)
    return ModelImage(name, bento_tag, False, seconds, added)
