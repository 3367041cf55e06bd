"""The stage table: one definition of each pipeline stage, used by the Airflow DAG (Docker and
local modes), `make demo` and the tests. Nothing here imports heavy libraries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    outputs: tuple[str, ...]          # relative to the data dir
    needs_gpu: bool = False
    retryable: bool = True            # False for gates: a refused data set stays refused
    timeout_minutes: int = 60
    assets: tuple[str, ...] = ()      # Airflow Asset URIs this stage announces when it succeeds
    needs_kaggle: bool = False        # gets Kaggle credentials (never in templates or logs)
    logs_mlflow_run: bool = False     # its last output line names the MLflow run it logged

    def command(self, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The argv that runs this stage (the data dir comes from CATSDOGS_DATA_DIR)."""
        argv = ["catsdogs", self.name]
        for override in overrides:
            argv += ["--set", override]
        return argv


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "Download or copy the raw images into raw/{cat,dog}/ with a manifest",
          outputs=("raw",), timeout_minutes=120, needs_kaggle=True),
    Stage("validate", "Great Expectations gate over the raw manifest",
          outputs=("reports/validation",), retryable=False, timeout_minutes=30),
    Stage("prepare", "Drop corrupt/duplicate images, write EDA", outputs=("prepared", "eda"),
          timeout_minutes=60),
    Stage("transform", "RGB, resize, stratified train/val/test split", outputs=("transformed",),
          timeout_minutes=60, assets=("catsdogs://data/transformed",)),
    Stage("train", "Transfer-learn the CNN, log to MLflow, register a challenger",
          outputs=(), needs_gpu=True, timeout_minutes=240,
          assets=("mlflow://models/CatsDogsCNN",), logs_mlflow_run=True),
    Stage("promote", "Move @champion to the challenger if it scores better", outputs=(),
          needs_gpu=True, timeout_minutes=30, assets=("mlflow://models/CatsDogsCNN@champion",)),
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
