"""The repairs of the store <-> database findings, one method a kind, run in REPAIR_ORDER; the
tasks whose versions changed are settled after the version repairs (see app.ops.maintenance)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app import versions
from app.db import job_queue
from app.db import tasks as db_tasks
from app.db.errors import Conflict
from app.ops import datasets as ops_datasets
from app.ops.findings import Finding
from app.store import DatasetFiles, Store

log = logging.getLogger(__name__)

# The repairs the server applies by itself at start-up (the rest wait for `prompthub doctor --repair`):
# none deletes a row or changes a task's active version.
# expire_dataset applies the operator's dataset retention (PROMPTHUB_DATASET_RETENTION_DAYS).
STARTUP_REPAIRS: tuple[str, ...] = ("delete_temp", "register", "expire_dataset")

# Every repair, in the order they run (files first, then rows, then the tasks are settled).
REPAIR_ORDER: tuple[str, ...] = (
    "delete_temp",
    "quarantine",
    "quarantine_orphan",
    "delete_orphan_sidecar",
    "rewrite_path",
    "register",
    "drop_row",
    "drop_task",
    "activate_newest",
    "rewrite_sidecar",
    "recover_jobs",
    "drop_dataset",
    "expire_dataset",
)
ALL_REPAIRS = REPAIR_ORDER


@dataclass
class JobRecovery:
    """How `recover_jobs` treats a stuck job (from the settings)."""

    stale_after_s: float
    on_crash: str
    max_attempts: int


class _Repairer:
    def __init__(
        self,
        s: Session,
        store: Store,
        kinds: Sequence[str],
        jobs: JobRecovery | None,
        datasets: DatasetFiles | None = None,
    ) -> None:
        self.s = s
        self.datasets = datasets
        self.store = store
        self.kinds = set(kinds)
        self.jobs = jobs
        self.done: list[str] = []
        self.touched: set[str] = set()  # tasks whose versions changed
        self.unactivated: set[str] = set()  # tasks that get their newest version activated
        self.sidecars: list[tuple[str, int]] = []
        self.jobs_recovered = False

    def run(self, findings: Sequence[Finding]) -> list[str]:
        for kind in REPAIR_ORDER:
            if kind in self.kinds:
                for f in findings:
                    if f.problem and f.repair == kind:
                        getattr(self, kind)(f)
            if kind == "activate_newest":
                self.settle()
        return self.done

    def _drop_row(self, task: str, version: int) -> None:
        db_tasks.drop_version_row(self.s, task, version)
        self.touched.add(task)
        self.done.append(f"dropped {task} v{version}: its file is missing from the store")

    # one method a repair kind
    def delete_temp(self, f: Finding) -> None:
        try:
            f.target.unlink()
            self.done.append(f"removed temp file {f.target}")
        except FileNotFoundError:
            pass

    def quarantine(self, f: Finding) -> None:
        task, version = f.target
        dest = self.store.quarantine_version(task, version, f"{task}.v{version:04d}.safetensors")
        if dest:
            self.done.append(f"quarantined {task} v{version} to {dest}")
        self._drop_row(task, version)

    def quarantine_orphan(self, f: Finding) -> None:
        task, version = f.target
        name = self.store.rel_path(task, version)
        dest = self.store.quarantine_version(task, version, name.replace("/", "."))
        if dest:
            self.done.append(f"quarantined unregistrable file {name} to {dest}")

    def delete_orphan_sidecar(self, f: Finding) -> None:
        self.store.delete_sidecar_file(f.target)
        self.done.append(f"removed orphan sidecar {f.target.parent.name}/{f.target.name}")

    def rewrite_path(self, f: Finding) -> None:
        task, version = f.target
        if db_tasks.set_version_file(self.s, task, version, self.store.rel_path(task, version)):
            self.done.append(f"rewrote the recorded file of {task} v{version}")

    def register(self, f: Finding) -> None:
        task, version, digest, unactivated, no_sidecar = f.target
        try:
            versions.register(self.s, self.store, task, version, sha256=digest, activate=False)
        except (versions.NotRegistrable, Conflict, ValueError) as e:
            log.warning("store: %s v%d skipped: %s", task, version, e)
            return
        self.done.append(f"registered {task} v{version}")
        self.touched.add(task)
        if unactivated:
            self.unactivated.add(task)
        if no_sidecar:  # killed between the file and its sidecar
            self.sidecars.append((task, version))

    def drop_row(self, f: Finding) -> None:
        self._drop_row(*f.target)

    def drop_task(self, f: Finding) -> None:
        self.touched.add(f.target)

    def activate_newest(self, f: Finding) -> None:
        self.touched.add(f.target)

    def settle(self) -> None:
        for name in sorted(self.touched):
            task = db_tasks.get_task(self.s, name)
            if task is None:
                continue
            have = [v.version for v in db_tasks.get_versions(self.s, name)]
            if not have:
                if "drop_task" in self.kinds:
                    db_tasks.drop_task_row(self.s, name)
                    self.done.append(f"dropped task {name}: no version left in the store")
            elif (task.active_version not in have and "activate_newest" in self.kinds) or (
                name in self.unactivated and task.active_version != max(have)
            ):
                versions.activate(self.s, name, max(have))
                self.done.append(f"activated {name} v{max(have)}")
        self.touched.clear()

    def rewrite_sidecar(self, f: Finding) -> None:
        self.sidecars.append(f.target)

    def _rewrite_sidecars(self) -> None:
        for task, version in dict.fromkeys(self.sidecars):
            if self.store.rewrite_sidecar(task, version, by="prompthub doctor"):
                self.done.append(f"rewrote the sidecar of {task} v{version}")
        self.sidecars.clear()

    def recover_jobs(self, f: Finding) -> None:
        if self.jobs_recovered or self.jobs is None:
            return
        self.jobs_recovered = True
        ids = job_queue.recover_stale_jobs(
            self.s,
            stale_after_s=self.jobs.stale_after_s,
            on_crash=self.jobs.on_crash,
            max_attempts=self.jobs.max_attempts,
        )
        self.done += [f"recovered stuck job {i} ({self.jobs.on_crash})" for i in ids]

    def drop_dataset(self, f: Finding) -> None:
        self.done += ops_datasets.drop_dataset(self.s, self.store, f, self.datasets)

    def expire_dataset(self, f: Finding) -> None:
        self.done += ops_datasets.expire_dataset(self.s, f, self.datasets)


def repair(
    s: Session,
    store: Store,
    findings: Sequence[Finding],
    kinds: Sequence[str] = ALL_REPAIRS,
    *,
    jobs: JobRecovery | None = None,
    datasets: DatasetFiles | None = None,
) -> list[str]:
    """Apply the repairs of `findings` whose kind is in `kinds`; returns a line for each change.
    `datasets`: the uploaded datasets' backend (None: local files)."""
    r = _Repairer(s, store, kinds, jobs, datasets)
    r.run(findings)
    if "rewrite_sidecar" in r.kinds:
        r._rewrite_sidecars()
    return r.done
