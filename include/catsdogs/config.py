"""Typed pipeline parameters: load `params.yaml`, apply `--set section.key=value` overrides.

This is the only module that reads the params file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from catsdogs.errors import UserError

DEFAULT_PARAMS_FILE = Path("params.yaml")

CLASSES: tuple[str, ...] = ("cat", "dog")
"""THE class list, in label-index order (0 = cat, 1 = dog, the positive class of the binary
metrics): the data stages' folders, the network's outputs and the service's answers."""
NEITHER = "neither"
FEEDBACK_LABELS: tuple[str, ...] = (*CLASSES, NEITHER)
"""The true labels feedback may give a prediction (POST /feedback): a class, or `neither` (the
picture is no cat and no dog)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: str = "kaggle:bhavikjikadara/dog-and-cat-classification-dataset"
    classes: list[str] = Field(default_factory=lambda: list(CLASSES))
    feedback: bool = True   # ingest merges the labelled production pictures (`feedback` section)

    @field_validator("classes")
    @classmethod
    def _classes_the_model_can_train(cls, classes: list[str]) -> list[str]:
        if tuple(classes) != CLASSES:
            raise ValueError(f"must be {list(CLASSES)} in that order (the model is a two-class "
                             f"cat/dog classifier), got {classes}")
        return classes


class ValidationParams(_Section):
    allowed_extensions: list[str] = Field(default_factory=lambda: ["jpg", "jpeg", "png", "heic",
                                                                   "heif", "avif"])
    min_samples_per_class: int = Field(20, ge=1)
    min_decodable_fraction: float = Field(0.95, ge=0, le=1)
    max_imbalance_ratio: float = Field(1.5, ge=1)
    min_width: int = Field(32, ge=1)
    min_height: int = Field(32, ge=1)


class TransformParams(_Section):
    image_size: int = Field(224, ge=16, le=1024)
    jpeg_quality: int = Field(95, ge=50, le=100)
    workers: int = Field(0, ge=0)


class SplitParams(_Section):
    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("split.train + split.val + split.test must equal 1")
        return self


class TrainParams(_Section):
    recipe: Literal["top_blocks", "full"] = "top_blocks"
    batch_size: int = Field(32, ge=1, le=4096)
    epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(1e-4, gt=0, lt=1)
    head_epochs: int = Field(30, ge=0, le=10000)
    head_lr: float = Field(1e-3, gt=0, lt=1)
    top_blocks: int = Field(3, ge=1, le=8)
    mirror: bool = False
    # cross-entropy against (1 - e) on the true class + e/2 on each (torch's label_smoothing)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # the 2-way head's start: random (torchvision's init) or the ImageNet head's mean cat rows
    # (classes 281-285) and mean dog rows (151-268) (catsdogs.training.model.imagenet_prior_head)
    head_init: Literal["random", "imagenet_prior"] = "random"
    # how often a labelled production picture of the train split is drawn relative to a source
    # picture (catsdogs.training.loading.epoch_order); 1.0: the plain shuffle, no picture favoured
    production_weight: float = Field(1.0, ge=1, allow_inf_nan=False)
    seed: int = 42
    num_workers: int = Field(2, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    ood_quantile: float = Field(0.99, gt=0, lt=1)
    # known out-of-distribution pictures ("neither" feedback) move the threshold down from there
    # once there are this many, keeping at least this share of val in distribution
    # (catsdogs.monitoring.ood.calibrate)
    ood_min_known: int = Field(20, ge=1)
    ood_min_in_distribution: float = Field(0.95, gt=0, lt=1)
    # fit a temperature on the val split and fold it into the head (catsdogs.training.calibration);
    # off: cross-validated on the sample it made log loss and ECE worse (docs/training.md)
    temperature_scaling: bool = False


class ModelParams(_Section):
    arch: Literal["resnet18", "mobilenet_v2"] = "resnet18"
    weights: str = "imagenet"
    freeze_backbone: bool = False


class MlflowParams(_Section):
    experiment_name: str = "Cats vs Dogs CNN"
    registered_model_name: str = "CatsDogsCNN"


class PromoteParams(_Section):
    metric: Literal["accuracy", "precision", "recall", "f1", "roc_auc"] = "f1"
    # below zero: a challenger up to |min_delta| worse is promoted too (rollout drills, tests)
    min_delta: float = Field(0.0, ge=-1, le=1)
    # paired_bootstrap: promote only when the 95% paired-bootstrap interval of
    # metric(challenger) - metric(champion) on the test pictures lies wholly above min_delta (a
    # gain inside the noise is "not better"); point: compare the two point figures only
    rule: Literal["paired_bootstrap", "point"] = "paired_bootstrap"


class FeedbackParams(_Section):
    """Labelled production pictures in training and promotion (docs/data.md)."""

    min_labels: int = Field(20, ge=1)          # ingest merges them only from this many on
    since: str = ""                            # ISO time: only pictures labelled at/after it ("" all)
    holdout_share: float = Field(0.2, ge=0, lt=1)  # held out by content hash: the production test set
    min_holdout: int = Field(30, ge=1)         # promote judges on it only with this many pictures
    near_duplicate_bits: int = Field(4, ge=0, le=64)  # average-hash distance that counts as the same picture
    retrain_labels: int = Field(50, ge=1)      # new labels since the last ingest that start training

    @field_validator("since", mode="before")
    @classmethod
    def _iso_time(cls, since: object) -> object:
        if isinstance(since, dt.datetime | dt.date):   # YAML reads an unquoted time as one
            return since.isoformat()
        if isinstance(since, str) and since:
            dt.datetime.fromisoformat(since)   # ValueError: pydantic reports the field
        return since

    @property
    def since_time(self) -> dt.datetime | None:
        """`since` as an aware UTC time (a time without a zone is UTC); None when unset."""
        if not self.since:
            return None
        moment = dt.datetime.fromisoformat(self.since)
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


class DeployParams(_Section):
    """The rollout after promotion (docs/rollout.md)."""

    target: Literal["auto", "local", "compose", "kubernetes", "none"] = "auto"
    check_images: int = Field(60, ge=50, le=10000)   # labelled test pictures sent after a switch
    accuracy_tolerance: float = Field(0.05, ge=0, le=1)  # allowed drop below the recorded test_accuracy
    min_accuracy: float = Field(0.0, ge=0, le=1)     # absolute floor for the live accuracy
    ready_timeout_s: float = Field(300.0, gt=0)      # new version's /readyz must answer by then
    drain_s: float = Field(5.0, ge=0)                # old version keeps serving in-flight requests
    seed: int = 0                                    # which test pictures the check sends
    # live-traffic phases (local and compose targets; catsdogs.deployment.phases), 0 s skips one
    shadow_requests: int = Field(200, ge=1)          # shadow ends after this many mirrored requests
    shadow_s: float = Field(600.0, ge=0)             # ... or this many seconds
    canary_percent: int = Field(10, ge=0, le=99)     # share of live requests the canary answers
    canary_s: float = Field(600.0, ge=0)             # canary watch window
    watch_s: float = Field(300.0, ge=0)              # watch after the full switch, old still up
    min_requests: int = Field(20, ge=1)              # fewer in a phase: it cannot judge
    idle_s: float = Field(60.0, gt=0)                # no request at all by then: phase ends
    min_agreement: float = Field(0.9, ge=0, le=1)    # shadow: same label as the champion
    max_error_ratio: float = Field(0.01, ge=0, le=1)  # 5xx answers / requests to the new version
    max_p99_s: float = Field(2.0, gt=0)              # p99 of the new version's /predict
    max_ood_ratio_gap: float = Field(0.1, ge=0, le=1)  # shadow: its OOD ratio - the champion's
    max_confidence_drop: float = Field(0.1, ge=0, le=1)  # median confidence vs the champion's


class MonitorParams(_Section):
    """`catsdogs monitor`: which predictions are compared with the served version's reference,
    how drift is decided, and how often drift may trigger retraining (docs/monitoring.md)."""

    window_hours: float = Field(24.0, gt=0)
    max_rows: int = Field(1000, ge=10)
    min_rows: int = Field(50, ge=10)
    embedding_method: Literal["model", "distance", "mmd", "ratio"] = "model"
    embedding_threshold: float = Field(0.75, gt=0)
    p_value: float = Field(0.001, gt=0, lt=1)
    threshold: float = Field(0.25, gt=0, le=1)
    reference_rows: int = Field(1000, ge=50)
    reference_split: Literal["val", "train", "all"] = "val"
    cooldown_hours: float = Field(24.0, ge=0)


class ReviewParams(_Section):
    """Which uploads the service keeps as pictures for the review queue, and for how long
    (docs/serving.md, "Review queue"). The service reads this section at its start."""

    low_confidence: float = Field(0.75, ge=0, le=1)   # keep when the answer's confidence < this
    keep_ood: bool = True                             # keep out-of-distribution uploads
    random_share: float = Field(0.01, ge=0, le=1)     # a random share kept for review
    recent_share: float = Field(0.05, ge=0, le=1)     # kept `recent_hours` for a drift event
    recent_hours: float = Field(48.0, gt=0)           # a `recent` picture not promoted goes then
    retention_days: float = Field(30.0, ge=0)         # a kept picture goes then (0: with its row)


class Params(_Section):
    data: DataParams = DataParams()
    validation: ValidationParams = ValidationParams()
    transform: TransformParams = TransformParams()
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    model: ModelParams = ModelParams()
    mlflow: MlflowParams = MlflowParams()
    promote: PromoteParams = PromoteParams()
    monitor: MonitorParams = MonitorParams()
    feedback: FeedbackParams = FeedbackParams()
    deploy: DeployParams = DeployParams()
    review: ReviewParams = ReviewParams()

    def flat(self) -> dict[str, Any]:
        """Every parameter as `section.key -> value` (for MLflow params and stamps)."""
        return {
            f"{section}.{key}": value
            for section, values in self.model_dump().items()
            for key, value in values.items()
        }

    def fingerprint(self, *sections: str) -> str:
        """A stable hash of the named sections (all when none), for idempotency stamps."""
        dumped = self.model_dump()
        chosen = {name: dumped[name] for name in (sections or dumped)}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `section.key=value`; the value is parsed as YAML (so `5`, `1e-4`, `[a, b]` work)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set train.epochs=1")
    return section, key, yaml.safe_load(raw) if raw.strip() else ""


def load_params(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Load and validate params; an unknown key or a wrong type is a UserError naming it."""
    path = Path(path) if path else DEFAULT_PARAMS_FILE
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a mapping of sections at the top level")
    elif path != DEFAULT_PARAMS_FILE:
        raise UserError(f"params file {path} does not exist")
    return _validated(raw, overrides, str(path))


def with_overrides(params: Params, overrides: list[str] | tuple[str, ...]) -> Params:
    """`params` with each `section.key=value` of `overrides` applied, validated as a file's."""
    return _validated(params.model_dump(), overrides, "overrides")


def _validated(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], where: str) -> Params:
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in Params.model_fields:
            raise UserError(f"--set {text!r}: unknown section {section!r} "
                            f"(one of {', '.join(Params.model_fields)})")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"{where}: section {section!r} must be a mapping")
        raw[section][key] = value
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise UserError(f"invalid params ({where}): {problems}") from None
