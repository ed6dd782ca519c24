"""Do the database and the files agree? Checks return findings; each finding names its repair.

One module for both users:
- the server's start-up (`startup_sync`): cheap checks (no hashing of registered files), and only
  the repairs in STARTUP_REPAIRS, which never delete a row nor change which version a task serves
  (a store folder that is missing, unmounted or mistyped must not erase the registry, on every
  replica at once; a rollback must survive a restart): everything else is logged for
  `prompthub doctor --repair`;
- `prompthub doctor` (app.ops.doctor): every check (`deep`), and with --repair every repair.

Finding kinds and their repairs:

    temp_file          a temp file left by an interrupted write        delete_temp
    missing_file       a version row whose file is not in the store    drop_row (none when the store
                                                                        holds no version at all)
    sha_mismatch       the file's sha256/size differ from the row's    quarantine (then drop the row)
    bad_file           the file is not a readable checkpoint           quarantine
    backbone_mismatch  trained on another backbone than configured     (none: the operator decides)
    path_mismatch      the row's file is not <task>/vNNNN.safetensors  rewrite_path
    sidecar_missing / sidecar_mismatch                                  rewrite_sidecar
    orphan_sidecar     a sidecar without its checkpoint                delete_orphan_sidecar
    orphan_file        a file the database does not list               register | quarantine_orphan
    empty_task         a task without versions                         drop_task
    no_active_version  a task whose active version does not exist      activate_newest
    stuck_job          a running job whose worker is gone              recover_jobs
    dataset_missing / dataset_mismatch                                  drop_dataset
    dataset_expired    older than the retention, no queued/running job uses it   expire_dataset
    schema             the database is behind the newest migration     migrate (the doctor, first)

Tasks whose versions change (rows dropped, files registered) are settled after the version repairs:
a task that had no active version gets its newest one (registering a new task's files); with
drop_task / activate_newest in the repairs (the doctor), a task left without versions is dropped and
one whose active version is gone gets its newest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import versions
from app.db import job_queue
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.db.errors import Conflict
from app.engine.checkpoint import CheckpointError
from app.ops import datasets as ops_datasets
from app.ops.datasets import check_expired_datasets
from app.ops.findings import Finding
from app.store import DatasetFiles, Store, StoreError, StoreUnavailable, temp_files

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


# ---------------------------------------------------------------------------------------- checks


def check_temp(roots: Iterable[Path], min_age_s: float) -> list[Finding]:
    found = []
    for root in roots:
        for p, age in temp_files(Path(root)):
            if age >= min_age_s:
                found.append(
                    Finding(
                        "temp_file",
                        str(p),
                        f"left by an interrupted write {age:.0f}s ago",
                        True,
                        "delete_temp",
                        p,
                    )
                )
            else:
                found.append(
                    Finding("temp_file", str(p), f"{age:.0f}s old: a write in progress?", problem=False)
                )
    return found


def check_versions(
    s: Session, store: Store, *, deep: bool, identity: Any | None = None, counts: dict | None = None
) -> list[Finding]:
    """Rows against files. `deep`: hash every file and read its header (the doctor); otherwise only
    files that are not registered yet are hashed (the start-up: thousands of tasks are not re-read)."""
    found: list[Finding] = []
    on_disk = {(e.task, e.version): e for e in store.scan(verify=deep)}
    tasks = db_tasks.list_tasks(s)
    rows = {(v.task_name, v.version): v for v in db_tasks.all_versions(s)}
    actives = {t.name: t.active_version for t in tasks}
    if counts is not None:
        counts.update(versions=len(rows), files=len(on_disk), tasks=len(actives))

    for (task, version), row in sorted(rows.items()):
        where = f"{task} v{version}"
        entry = on_disk.get((task, version))
        expected_rel = store.rel_path(task, version)
        if deep and row.file != expected_rel:
            found.append(
                Finding(
                    "path_mismatch",
                    where,
                    f"recorded file {row.file!r}, expected {expected_rel!r}",
                    repair="rewrite_path",
                    target=(task, version),
                )
            )
        if entry is None:
            found.append(
                Finding(
                    "missing_file",
                    where,
                    f"the file {expected_rel} is missing from the store",
                    repair="drop_row",
                    target=(task, version),
                )
            )
            continue
        if deep:
            found += _check_file(store, entry, row, identity)

    if rows and not on_disk:
        # the store holds no version at all while the database lists some: a folder not mounted,
        # a mistyped setting, a new node's empty folder, another bucket. Never a reason to empty
        # the registry: the rows are kept (doctor --repair too) until the store is back.
        for f in found:
            if f.kind == "missing_file":
                f.repair = None
                f.message += f" (the store {store.describe()} holds no version at all: rows are not dropped)"

    # tasks with no active version now get their newest version once their files are registered
    unactivated = {task for task, _ in on_disk} - {name for name, active in actives.items() if active}
    for (task, version), entry in sorted(on_disk.items()):
        if (task, version) in rows:
            continue
        where = f"{task} v{version}"
        try:
            digest = entry.sha256 if deep else store.hash_version(task, version)
            sidecar = entry.sidecar if deep else store.read_sidecar(task, version)
            reason = _unregistrable(s, store, entry, digest, sidecar)
        except StoreUnavailable:
            raise
        except (OSError, StoreError) as e:  # gone since the listing
            log.warning("store: %s skipped: %s", where, e)
            continue
        if reason is None:
            found.append(
                Finding(
                    "orphan_file",
                    where,
                    "in the store but not in the database (valid: can be registered)",
                    repair="register",
                    target=(task, version, digest, task in unactivated, sidecar is None),
                )
            )
        else:
            found.append(
                Finding(
                    "orphan_file",
                    where,
                    f"in the store but not in the database, and {reason}",
                    repair="quarantine_orphan",
                    target=(task, version),
                )
            )

    if deep:
        for p in store.orphan_sidecars():
            found.append(
                Finding(
                    "orphan_sidecar",
                    f"{p.parent.name}/{p.name}",
                    "a sidecar without its checkpoint",
                    repair="delete_orphan_sidecar",
                    target=p,
                )
            )

    versions_of: dict[str, list[int]] = {}
    for task, version in rows:
        versions_of.setdefault(task, []).append(version)
    for name, active in sorted(actives.items()):
        have = versions_of.get(name, [])
        if not have:
            found.append(
                Finding("empty_task", name, "the task has no version", repair="drop_task", target=name)
            )
        elif active not in have:
            found.append(
                Finding(
                    "no_active_version",
                    name,
                    f"active version {active} does not exist",
                    repair="activate_newest",
                    target=name,
                )
            )
    return found


def _check_file(store: Store, entry: Any, row: Any, identity: Any | None) -> list[Finding]:
    task, version = entry.task, entry.version
    where = f"{task} v{version}"
    if entry.sha256 != row.sha256 or entry.size_bytes != row.size_bytes:
        msg = (
            f"the file's sha256 {entry.sha256[:12]}… ({entry.size_bytes} bytes) differs from the "
            f"database's {row.sha256[:12]}… ({row.size_bytes} bytes): corrupt or replaced"
        )
        return [Finding("sha_mismatch", where, msg, repair="quarantine", target=(task, version))]
    try:
        doc = store.read_header(task, version)
    except StoreUnavailable:
        raise  # an outage says nothing about the file
    except (CheckpointError, OSError, StoreError) as e:
        return [
            Finding(
                "bad_file",
                where,
                f"not a readable checkpoint: {e}",
                repair="quarantine",
                target=(task, version),
            )
        ]
    found = []
    if identity is not None and not identity.matches(doc.get("backbone") or {}):
        want = (doc.get("backbone") or {}).get("name")
        msg = f"trained on backbone {want!r}, not the configured {identity.name!r}"
        found.append(Finding("backbone_mismatch", where, msg))
    side = entry.sidecar
    if side is None:
        found.append(
            Finding(
                "sidecar_missing",
                where,
                "no JSON sidecar next to the checkpoint",
                repair="rewrite_sidecar",
                target=(task, version),
            )
        )
    elif side.get("sha256") != entry.sha256 or side.get("size_bytes") != entry.size_bytes:
        found.append(
            Finding(
                "sidecar_mismatch",
                where,
                "the sidecar's sha256 or size differs from the file",
                repair="rewrite_sidecar",
                target=(task, version),
            )
        )
    return found


def _unregistrable(
    s: Session, store: Store, entry: Any, digest: str, sidecar: dict[str, Any] | None
) -> str | None:
    """Why an unregistered file cannot be registered, or None when it can. A file a training job of
    this database wrote but did not publish (the job was killed between the file and its row; it is
    re-run or failed) is not registered: it would serve a version of a job that did not finish. A
    file from a job this database does not know (a store moved to a new database) is."""
    side_sha = (sidecar or {}).get("sha256")
    if side_sha and side_sha != digest:
        return "its sha256 differs from its sidecar's"
    try:
        doc = store.read_header(entry.task, entry.version)
    except StoreUnavailable:
        raise  # an outage says nothing about the file
    except (CheckpointError, OSError, StoreError) as e:
        return str(e)
    if not (doc.get("spec") or {}).get("task_type"):
        return "its metadata holds no task spec"
    source = str(doc.get("source") or "")
    if source.startswith("job:"):
        job = db_jobs.get_job(s, source[len("job:") :])
        if job is not None and (job.result or {}).get(entry.task) != entry.version:
            return f"it was written by job {job.id}, which did not publish it (the job is {job.state})"
    return None


def check_jobs(s: Session, stale_after_s: float, counts: dict | None = None) -> list[Finding]:
    running, stale = job_queue.stale_running_jobs(s, stale_after_s)
    if counts is not None:
        counts["jobs_running"] = running
    found = []
    for j in stale:
        beat = j.heartbeat_at.isoformat() if j.heartbeat_at else "never"
        msg = f"running on {j.worker_id}, which is gone (last heartbeat {beat})"
        found.append(Finding("stuck_job", f"job {j.id}", msg, repair="recover_jobs", target=j.id))
    return found


# --------------------------------------------------------------------------------------- repairs


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


def startup_sync(
    s: Session,
    store: Store,
    *,
    temp_age_s: float = 60.0,
    dataset_retention_days: float | None = None,
    datasets: DatasetFiles | None = None,
) -> list[str]:
    """The server's start-up: the cheap checks, and the repairs in STARTUP_REPAIRS (remove old temp
    files, register new files, delete datasets past the retention). No version or task row is
    deleted and no active version changes: the other findings are logged (`prompthub doctor
    --repair` handles them). Returns the changes."""
    counts: dict[str, int] = {}
    findings = check_temp(store.local_roots(), temp_age_s)
    try:
        findings += check_versions(s, store, deep=False, counts=counts)
    except StoreUnavailable as e:  # the bucket is down: serve what the node has cached, sync next start
        s.rollback()
        log.error(
            "store: %s cannot be reached; the start-up sync of versions is skipped: %s", store.describe(), e
        )
    findings += check_expired_datasets(s, dataset_retention_days)
    missing = sum(1 for f in findings if f.kind == "missing_file")
    if missing and (not store.present() or counts.get("files", 0) == 0):
        log.error(
            "store: %s %s is %s but the database lists %d versions: is it mounted, or is "
            "PROMPTHUB_STORE_DIR / PROMPTHUB_STORE_URL mistyped? Nothing is deleted; those tasks fail "
            "until it is back",
            "the folder" if store.kind == "local" else "the bucket",
            store.describe(),
            "missing" if not store.present() else "empty",
            counts.get("versions", missing),
        )
    for f in findings:
        if f.problem and f.repair not in STARTUP_REPAIRS:
            log.warning("store: %s %s: %s (run `prompthub doctor`)", f.kind, f.where, f.message)
    changes = repair(s, store, findings, STARTUP_REPAIRS, datasets=datasets)
    for line in changes:
        log.info("store sync: %s", line)
    return changes
