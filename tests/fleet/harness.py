"""A fleet on loopback for tests and benchmarks: scripts/fleet.sh (the same script as `make fleet`)
with free ports, its own folder, database and bucket. Processes and pid files as `make fleet`'s."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
PG = os.environ.get("PROMPTHUB_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    """`with Fleet(tmp_path, backbone=...) as fleet:` starts it (up), stops it (down) and drops its
    database afterwards. `env`: more settings for every process (PROMPTHUB_*)."""

    def __init__(
        self, folder: Path, *, backbone: str, replicas: int = 2, workers: int = 2, **env: str
    ) -> None:
        self.dir = Path(folder)
        self.api_ports = [free_port() for _ in range(replicas)]
        self.lb_port = free_port()
        self.s3_port = free_port()
        self.db = f"prompthub_fleet_{uuid.uuid4().hex[:10]}"
        self.workers = workers
        self.env = {
            **os.environ,
            "FLEET_DIR": str(self.dir),
            "FLEET_API_PORTS": " ".join(map(str, self.api_ports)),
            "FLEET_WORKERS": str(workers),
            "FLEET_LB_PORT": str(self.lb_port),
            "FLEET_S3_PORT": str(self.s3_port),
            "FLEET_DB": self.db,
            "FLEET_PG": PG,
            "FLEET_BUCKET": f"ph-{uuid.uuid4().hex[:10]}",
            "PROMPTHUB_BACKBONE": backbone,
            "PROMPTHUB_WORKER_POLL_S": "0.2",
            "PROMPTHUB_TORCH_THREADS": "1",  # 4+ processes share the cores
            # its own Celery queues on the shared broker (other fleets and tests use theirs)
            "PROMPTHUB_CELERY_QUEUE_PREFIX": f"ph-fleet-{uuid.uuid4().hex[:8]}",
            **env,
        }
        self.env.pop("AWS_ENDPOINT_URL", None)  # the fleet's own S3 endpoint
        self.lb = f"http://127.0.0.1:{self.lb_port}"
        self.apis = [f"http://127.0.0.1:{p}" for p in self.api_ports]

    # ------------------------------------------------------------------ the script
    def _script(self, cmd: str, timeout: float = 600) -> str:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "fleet.sh"), cmd],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"fleet.sh {cmd} failed ({out.returncode}):\n{out.stderr[-3000:]}\n{self.logs()}"
            )
        return out.stderr

    def up(self, keep: str = "") -> Fleet:
        self.env["FLEET_KEEP"] = keep
        self._script("up")
        return self

    def down(self, keep: str = "") -> None:
        """Stop the fleet's processes; `keep="s3"` leaves the S3 server (moto holds objects in
        memory: it stands for durable object storage, as PostgreSQL and RabbitMQ, which stay up)."""
        self.env["FLEET_KEEP"] = keep
        self._script("down", timeout=180)

    def __enter__(self) -> Fleet:
        try:
            return self.up()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.down(keep="")
        finally:
            import psycopg

            with psycopg.connect(f"{PG}/postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')

    # ------------------------------------------------------------------ processes
    def pid(self, name: str) -> int:
        return int((self.dir / f"{name}.pid").read_text().strip())

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to the process `name` (api-1, worker-2, ...) and its process group."""
        pid = self.pid(name)
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        return pid

    def alive(self, name: str) -> bool:
        try:
            os.kill(self.pid(name), 0)
        except (ProcessLookupError, FileNotFoundError):
            return False
        stat = Path(f"/proc/{self.pid(name)}/stat")
        return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"

    def logs(self, tail: int = 1500) -> str:
        parts = []
        for log in sorted(self.dir.glob("*.log")):
            text = log.read_text(errors="replace")
            parts.append(f"--- {log.name}\n{text[-tail:]}")
        return "\n".join(parts)

    @property
    def database_url(self) -> str:
        return f"{PG}/{self.db}"

    def client(self, base: str | None = None, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=base or self.lb, timeout=timeout)

    def wait(self, cond, timeout: float, what: str, every: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")
