"""Fault-injection points for crash tests, off unless a test turns one on.

`pause_point(name)` does nothing unless PROMPTHUB_FAULT_PAUSE names this point (the settings
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


def pause_point(name: str) -> None:
    if os.environ.get(PAUSE_ENV) != name:
        return
    path = os.environ.get(PAUSE_FILE_ENV)
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(MAX_PAUSE_S)  # bounded: a test that forgets to kill does not hang forever
