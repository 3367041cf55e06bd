"""What a stage returns: one line for people, one flat JSON document for machines.

The CLI prints `line()`, or `to_dict()` as JSON with `--json`, and writes the JSON document to
`--summary-file` / `$CATSDOGS_SUMMARY_FILE` when asked: every Airflow runner turns it into the
task's XCom (local: read from a temporary file; docker: copied out of the container; kubernetes:
written to the XCom sidecar's file), so a run id or promote's decision travels as data, never
scraped from a log.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catsdogs.storage import atomic_file

SUMMARY_FILE_ENV = "CATSDOGS_SUMMARY_FILE"
_ENVELOPE = ("stage", "status", "skipped", "message")


@dataclass
class Summary:
    """`details` keys must not reuse the envelope's names (stage, status, skipped, message)."""

    stage: str
    message: str
    skipped: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = set(_ENVELOPE) & set(self.details)
        if clash:
            raise ValueError(f"Summary details may not use the keys {sorted(clash)}")

    @property
    def status(self) -> str:
        """`skipped` when the outputs were already up to date, else `done`."""
        return "skipped" if self.skipped else "done"

    def line(self) -> str:
        prefix = "skipped (up to date)" if self.skipped else "done"
        return f"[{self.stage}] {prefix}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """{"stage", "status", "skipped", "message", **details}: strict JSON (Airflow's XCom API
        refuses NaN and infinities: a figure that could not be computed, such as a drift test's
        p-value on a constant column, becomes null)."""
        document = {"stage": self.stage, "status": self.status, "skipped": self.skipped,
                    "message": self.message, **self.details}
        return _finite(json.loads(json.dumps(document, default=str)))

    def write(self, path: Path) -> None:
        """The JSON document, written atomically (a reader never sees half a file)."""
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
