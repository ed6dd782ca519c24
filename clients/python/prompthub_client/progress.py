"""The progress of a training job while `Job.wait()` polls it: a tqdm bar when tqdm is installed,
else one plain line on stderr when the state changes, and while it runs at most one every 2 s."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PLAIN_MIN_INTERVAL_S = 2.0


class Progress:
    def __init__(self, job_id: str, *, use_tqdm: bool | None = None, stream: TextIO | None = None) -> None:
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._tqdm: Any = None
        if use_tqdm is not False:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm
            except ImportError:
                if use_tqdm:
                    raise
        self._last_line = ""
        self._last_state = ""
        self._last_time = 0.0

    def update(self, state: str, progress: dict[str, Any] | None) -> None:
        p = progress or {}
        step, total = int(p.get("step") or 0), p.get("total")
        loss, epoch, message = p.get("loss"), p.get("epoch"), p.get("message") or state
        if self._tqdm is not None:
            if self._bar is None and total:
                self._bar = self._tqdm(
                    total=int(total), desc=f"job {self.job_id[:8]}", unit="step", file=self.stream
                )
            if self._bar is not None:
                if total and self._bar.total != int(total):
                    self._bar.total = int(total)
                self._bar.n = min(step, self._bar.total or step)
                post = {"state": state}
                if epoch is not None:
                    post["epoch"] = f"{float(epoch):.2f}"
                if loss is not None:
                    post["loss"] = f"{float(loss):.4f}"
                self._bar.set_postfix(post, refresh=False)
                self._bar.refresh()
                return
        of = f"/{total}" if total else ""
        line = f"job {self.job_id[:8]} {state}: step {step}{of}"
        if epoch is not None:
            line += f" epoch {float(epoch):.2f}"
        if loss is not None:
            line += f" loss {float(loss):.4f}"
        if message and message not in (state, "training"):
            line += f" ({message})"
        now = time.monotonic()
        due = now - self._last_time >= PLAIN_MIN_INTERVAL_S or state != self._last_state
        if line != self._last_line and due:
            print(line, file=self.stream, flush=True)
            self._last_line, self._last_state, self._last_time = line, state, now

    def close(self, state: str, progress: dict[str, Any] | None) -> None:
        if self._bar is not None:
            self.update(state, progress)
            self._bar.close()
            self._bar = None
        else:
            self._last_state = ""
            self.update(state, progress)
