"""A finding of the store <-> database checks (app.ops.checks, app.ops.datasets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Finding:
    kind: str
    where: str
    message: str
    problem: bool = True  # False: a note (e.g. a young temp file that may be a write in progress)
    repair: str | None = None  # the repair kind that fixes it; None: not repairable here
    target: Any = field(default=None, compare=False, repr=False)  # what the repair acts on

    def line(self) -> str:
        tag = "PROBLEM" if self.problem else "note"
        return f"{tag:8s} {self.kind:18s} {self.where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "where": self.where,
            "message": self.message,
            "problem": self.problem,
            "repair": self.repair,
        }
