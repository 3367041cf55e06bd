"""The stage table: THE list of `catsdogs` commands. The CLI builds its sub-commands from it, the
Airflow DAG its tasks (the entries with `dag_task=True`, in order), and the tests their
expectations. Adding a stage is one entry here plus its module `catsdogs.stages.<name>`.

Nothing here imports heavy libraries.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAINING_DAG_ID = "catsdogs_training"
DEFAULT_QUEUE = "default"   # Airflow's [operators] default_queue: the CPU (data) workers
GPU_QUEUE = "gpu"           # the workers on hosts with GPUs
MONITORING_DAG_ID = "catsdogs_monitoring"


@dataclass(frozen=True)
class Stage:
    """One `catsdogs <name>` command, implemented by `catsdogs.stages.<name>.run`."""

    name: str
    description: str
    outputs: tuple[str, ...] = ()     # relative to the data dir
    dag_task: bool = True             # False: a CLI command only, not a task of the training DAG
    needs_gpu: bool = False
    retryable: bool = True            # False for gates: a refused data set stays refused
    timeout_minutes: int = 60
    assets: tuple[str, ...] = ()      # Airflow Asset URIs this stage announces when it succeeds
    needs_kaggle: bool = False        # gets Kaggle credentials (never in templates or logs)
    # Variables passed from the Airflow environment to the stage unrendered and unlogged (docker:
    # the container's private environment; local: the task's inherited environment).
    private_env: tuple[str, ...] = ()
    logs_mlflow: bool = False         # its summary names an MLflow run (`run_id`): a UI link
    needs_docker: bool = False        # docker runner: gets the Docker engine's socket (rollouts)
    # Kubernetes runner: what the scheduler reserves for the stage's pod (Kubernetes quantities).
    # `memory` is the request and the limit (above it the pod is OOM-killed, not a neighbour).
    cpu: str = "1"
    memory: str = "2Gi"

    @property
    def queue(self) -> str:
        """The Celery queue its task goes to: `gpu` for the stages that need a GPU, else
        `default`. Each compose Celery worker consumes one (`airflow celery worker -q`); the
        LocalExecutor (`make demo`) ignores it."""
        return GPU_QUEUE if self.needs_gpu else DEFAULT_QUEUE

    @property
    def module(self) -> str:
        """The module whose `run(params, paths, **options) -> Summary` implements the stage."""
        return f"catsdogs.stages.{self.name}"

    def command(self, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The argv that runs this stage (the data dir comes from CATSDOGS_DATA_DIR)."""
        argv = ["catsdogs", self.name]
        for override in overrides:
            argv += ["--set", override]
        return argv


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "Download or copy the raw images into raw/{cat,dog}/ with a manifest, "
          "merged with the labelled production pictures",
          outputs=("raw", "feedback"), timeout_minutes=120, needs_kaggle=True, cpu="1",
          memory="1Gi", private_env=("CATSDOGS_PREDICTION_LOG_URL",)),
    Stage("validate", "Great Expectations gate over the raw manifest",
          outputs=("reports/validation",), retryable=False, timeout_minutes=30, cpu="1",
          memory="2Gi"),
    Stage("prepare", "Drop corrupt/duplicate images, write EDA", outputs=("prepared", "eda"),
          timeout_minutes=60, cpu="2", memory="2Gi"),
    Stage("transform", "RGB, resize, stratified train/val/test split", outputs=("transformed",),
          timeout_minutes=60, assets=("catsdogs://data/transformed",), cpu="4", memory="4Gi"),
    Stage("train", "Transfer-learn the CNN, log to MLflow, register a challenger",
          needs_gpu=True, timeout_minutes=240, assets=("mlflow://models/CatsDogsCNN",),
          logs_mlflow=True, cpu="4", memory="12Gi"),
    Stage("promote", "Move @champion to the challenger if it scores better",
          needs_gpu=True, timeout_minutes=30, assets=("mlflow://models/CatsDogsCNN@champion",),
          logs_mlflow=True, cpu="2", memory="6Gi"),
    Stage("deploy", "Roll @champion out (health-gated switch), check it live, roll back on failure",
          timeout_minutes=60, needs_docker=True, retryable=False, cpu="1", memory="2Gi"),
    Stage("rollback", "Move @champion back (previous champion or --to VERSION) and deploy it",
          dag_task=False, needs_docker=True),
    Stage("evaluate", "Score a registered model on a folder of cat/ and dog/ images",
          dag_task=False),
    # The catsdogs_batch_scoring DAG's task (not the training DAG's).
    Stage("score", "Label every picture of a folder or archive with a registered model "
          "(Parquet + CSV report, resumable)", outputs=("reports/scoring",), dag_task=False,
          timeout_minutes=240, logs_mlflow=True, cpu="4", memory="4Gi"),
    Stage("champion", "The @champion alias: `history` lists its moves, `card` shows a version's "
          "model card", dag_task=False),
    # The catsdogs_monitoring DAG's task (not the training DAG's): its drift decision becomes the
    # Asset event that triggers catsdogs_training (catsdogs.orchestration.monitoring).
    Stage("monitor", "Compare the latest predictions with the served version's reference "
          "(Evidently drift report)", outputs=("reports/monitoring",), dag_task=False,
          timeout_minutes=30, logs_mlflow=True, cpu="1", memory="2Gi",
          private_env=("CATSDOGS_PREDICTION_LOG_URL", "CATSDOGS_PUSHGATEWAY_URL")),
    Stage("review", "The review queue: its size, and its labels to and from Label Studio's JSON",
          dag_task=False, private_env=("CATSDOGS_PREDICTION_LOG_URL",)),
    # The catsdogs_monitoring DAG's second stage: enough new labels become the labelled-data
    # Asset event that triggers catsdogs_training (catsdogs.orchestration.monitoring).
    Stage("labels", "Count the labelled production pictures newer than the last ingest "
          "(retraining starts at feedback.retrain_labels)", dag_task=False, timeout_minutes=10,
          cpu="0.5", memory="512Mi",
          private_env=("CATSDOGS_PREDICTION_LOG_URL", "CATSDOGS_PUSHGATEWAY_URL")),
)

PIPELINE: tuple[Stage, ...] = tuple(stage for stage in STAGES if stage.dag_task)
"""The training DAG's tasks, in order."""

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE)

QUEUES: tuple[str, ...] = tuple(dict.fromkeys(stage.queue for stage in PIPELINE))
"""The Celery queues the training DAG's tasks go to, in pipeline order (`default`, `gpu`)."""
ROLLBACK_DAG_ID = "catsdogs_rollback"
ROLLBACK_STAGE: Stage = next(stage for stage in STAGES if stage.name == "rollback")
SCORING_DAG_ID = "catsdogs_batch_scoring"
SCORE_STAGE: Stage = next(stage for stage in STAGES if stage.name == "score")
