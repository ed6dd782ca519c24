"""Fault-injection points for crash tests, off unless a test turns one on.

`step_delay()` slows each training step when PROMPTHUB_FAULT_STEP_DELAY_S is set (the setting
`fault_step_delay_s`). `pause_point(name)` does nothing unless PROMPTHUB_FAULT_PAUSE names this point (the settings
`fault_pause` / `fault_pause_file`, which the server passes on to its embedded worker). Then the
process writes its pid to PROMPTHUB_FAULT_PAUSE_FILE and sleeps, so the test can kill -9 it at
exactly that moment (e.g. "publish:file-written": the version file is on disk, its row is not).
"""

from __future__ import annotations

import os
import time

PAUSE_ENV = "PROMPTHUB_FAULT_PAUSE"
PAUSE_FILE_ENV = "PROMPTHUB_FAULT_PAUSE_FILE"
MAX_PAUSE_S = 600.0
STEP_DELAY_ENV = "PROMPTHUB_FAULT_STEP_DELAY_S"
MAX_STEP_DELAY_S = 5.0


def pause_point(name: str) -> None:
    if os.environ.get(PAUSE_ENV) != name:
        return
    path = os.environ.get(PAUSE_FILE_ENV)
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(MAX_PAUSE_S)  # bounded: a test that forgets to kill does not hang forever


def step_delay() -> None:
    """Sleep PROMPTHUB_FAULT_STEP_DELAY_S after each training step (0: none), so a kill test's job
    is still training when it is killed however fast the machine is."""
    try:
        delay = float(os.environ.get(STEP_DELAY_ENV) or 0.0)
    except ValueError:
        return
    if delay > 0:
        time.sleep(min(delay, MAX_STEP_DELAY_S))
