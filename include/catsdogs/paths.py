"""The data directory layout every stage, the DAG and the tests agree on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "CATSDOGS_DATA_DIR"  # `catsdogs.settings.StageSettings.data_dir`


@dataclass(frozen=True)
class DataPaths:
    root: Path

    @classmethod
    def resolve(cls, data_dir: str | Path | None = None) -> DataPaths:
        """`--data-dir`, else `$CATSDOGS_DATA_DIR`, else `./data`."""
        from catsdogs.settings import StageSettings, load

        chosen = data_dir or load(StageSettings).data_dir or "data"
        return cls(Path(chosen).expanduser().resolve())

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def feedback(self) -> Path:
        """The labelled production pictures ingest has copied (`catsdogs.data.feedback`)."""
        return self.root / "feedback"

    @property
    def raw_manifest(self) -> Path:
        return self.raw / "manifest.csv"

    @property
    def validation_reports(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def prepared_manifest(self) -> Path:
        return self.prepared / "manifest.csv"

    @property
    def eda(self) -> Path:
        return self.root / "eda"

    @property
    def transformed(self) -> Path:
        return self.root / "transformed"

    @property
    def splits_csv(self) -> Path:
        return self.transformed / "splits.csv"

    def split_dir(self, split: str) -> Path:
        return self.transformed / split

    @property
    def mlflow_dir(self) -> Path:
        """Embedded MLflow store (SQLite + artefacts) used when MLFLOW_TRACKING_URI is unset."""
        return self.root / "mlflow"
