"""Resumable training: the whole state of a run, saved between two steps and loaded to go on.

A `RunCheckpointer` is handed to the training loop (train_task(..., checkpointer=...)); the loop
asks it after every step whether a save is due (every `every_s` seconds, or every `every_steps`
steps) and, when the run is stopped from outside (a stopping worker), saves once more. The state is
everything the rest of the run depends on: the trainable tensors, the optimiser and scheduler
state, the random number generators (Python, torch, the batch-order generator as it was at the
start of the epoch), the data position (epoch, step, steps done in the epoch, the running loss),
the history, and the best epoch so far (its served task as checkpoint bytes). Resuming from it
gives the same result as a run that was never interrupted.

The file is written atomically (temp file, fsync, rename: app.engine.checkpoint.atomic_write), so a
worker killed while saving leaves the previous state. It is read with `torch.load(weights_only=True)`:
tensors and plain containers only, nothing that runs code. A state whose fingerprint (the run's
config and sizes) differs from the run's is ignored: the run starts over.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import torch

from app.engine.checkpoint import atomic_write

log = logging.getLogger(__name__)

#: 2: the optimizer's parameter groups changed (app.engine.train._param_groups); a state saved
#: with the old groups would not load into the new optimizer, so such a run starts over
STATE_VERSION = 2


class RunCheckpointer:
    """Where and how often a run saves its state; `resumed_step` is set when it loaded one."""

    def __init__(self, path: str | Path, every_s: float = 180.0, every_steps: int | None = None) -> None:
        self.path = Path(path)
        self.every_s = float(every_s)
        self.every_steps = every_steps
        self.resumed_step: int | None = None
        self.saves = 0
        self._last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every_steps:
            return step % self.every_steps == 0
        return self.every_s > 0 and time.monotonic() - self._last >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save({"version": STATE_VERSION, **state}, buf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, buf.getvalue())
        self._last = time.monotonic()
        self.saves += 1

    def load(self, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        """The saved state when there is one of this run (same fingerprint); None otherwise."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            state = torch.load(io.BytesIO(data), weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or foreign file: start over
            log.warning("%s: unreadable training state; starting over", self.path, exc_info=True)
            return None
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != fingerprint:
            log.warning("%s: training state of another run; starting over", self.path)
            return None
        self.resumed_step = int(state["step"])
        return state

    def stage(self, name: str) -> RunCheckpointer:
        """The checkpointer of a later stage of the same job (a multi-task job's per-task stage)."""
        return RunCheckpointer(
            self.path.with_name(f"{self.path.name}.{name}"), self.every_s, self.every_steps
        )

    def clear(self) -> None:
        """Remove the state file and those of the job's later stages."""
        self.path.unlink(missing_ok=True)
        for p in self.path.parent.glob(f"{self.path.name}.*"):
            p.unlink(missing_ok=True)


def bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.numpy().tobytes()
