"""What a stage returns: printed by the CLI as one line, asserted on by tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    stage: str
    message: str
    skipped: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        prefix = "skipped (up to date)" if self.skipped else "done"
        return f"[{self.stage}] {prefix}: {self.message}"

    def to_json(self) -> str:
        return json.dumps(
            {"stage": self.stage, "message": self.message, "skipped": self.skipped,
             "details": self.details},
            default=str,
        )
