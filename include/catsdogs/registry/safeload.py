"""A registered network loaded without unpickling anything: its weights, saved at registration as
a safetensors state dict (`WEIGHTS_PATH` inside the MLflow model folder, beside MLflow's own
pickle), poured into the architecture built from code (`training.model.build_model` of the
version's `arch`).

safetensors holds tensors and a JSON header only, so reading it runs no code, whatever the file
says. MLflow's pickle (`data/model.pth`) stays in the artifact for MLflow's own tools but is
never read here, unless `CATSDOGS_LOAD_PICKLED_MODELS` allows it for a version that has no
safetensors weights (registered before them, or an architecture this code does not build: the
hand-made test networks); without it such a version is refused, naming it. Every loader
(`record.load_model`: promote, evaluate, score; the Bento service and the import's variant
measurement) reads a folder `integrity.download_verified` has checked first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catsdogs.errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
WEIGHTS_PATH = f"extra_files/{WEIGHTS_FILE}"  # where MLflow's `extra_files` puts it


def save_weights(model: torch.nn.Module, folder: Path) -> Path:
    """`model`'s state dict written as `folder/WEIGHTS_FILE` (CPU tensors, each its own copy:
    safetensors refuses shared storage); the file, for `log_model(extra_files=...)`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / WEIGHTS_FILE
    save_file({key: value.detach().cpu().clone().contiguous()
               for key, value in model.state_dict().items()}, str(target))
    return target


def load_network(model_folder: Path, *, name: str, version: str, arch: str | None,
                 classes: int, device: Any = "cpu") -> torch.nn.Module:
    """The network of registered version `name` v`version` from its (verified) MLflow model
    folder, in eval mode on `device`: `arch` (a `training.model.ARCHES` name) built with
    `classes` outputs and the folder's safetensors weights loaded strictly. Raises UserError
    naming the version when the weights do not fit the architecture, or when the version has
    no safetensors weights (or an architecture not built from code) and
    `CATSDOGS_LOAD_PICKLED_MODELS` is off."""
    from catsdogs.training.model import ARCHES, build_model

    weights = model_folder / WEIGHTS_PATH
    if arch in ARCHES and weights.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        net = build_model(arch, weights="none", num_classes=classes)
        try:
            net.load_state_dict(load_file(str(weights)), strict=True)
        except (SafetensorError, RuntimeError) as exc:
            raise UserError(f"{name} v{version}: its weights ({WEIGHTS_PATH}) do not fit a "
                            f"{arch} with {classes} classes ({str(exc).splitlines()[0]})"
                            ) from None
        log.info("%s v%s: %s built from code, weights from %s (nothing unpickled)", name,
                 version, arch, WEIGHTS_FILE)
        return net.to(device).eval()
    from catsdogs.settings import TrackingSettings, load

    why = (f"its architecture {arch!r} is not one this code builds ({', '.join(ARCHES)})"
           if arch not in ARCHES else f"it has no {WEIGHTS_PATH} (registered before weights "
           "were saved as safetensors)")
    if not load(TrackingSettings).load_pickled_models:
        raise UserError(f"{name} v{version} refused: {why}, so loading it would unpickle its "
                        "MLflow model, which can run arbitrary code; retrain and register it "
                        "again (`catsdogs train`), or set CATSDOGS_LOAD_PICKLED_MODELS=1 to "
                        "unpickle it (its sha256 was checked) if you trust who registered it")
    import mlflow.pytorch

    log.warning("%s v%s: %s; unpickling its verified MLflow model (CATSDOGS_LOAD_PICKLED_MODELS "
                "is on)", name, version, why)
    return mlflow.pytorch.load_model(str(model_folder), map_location=device).eval()
