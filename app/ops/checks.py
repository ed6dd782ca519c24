"""The store <-> database checks: each returns findings (app.ops.findings), and each finding names
its repair (app.ops.repairs). The kinds are listed in app.ops.maintenance."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.db import job_queue
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.engine.checkpoint import CheckpointError
from app.ops.findings import Finding
from app.store import Store, StoreError, StoreUnavailable, temp_files

log = logging.getLogger(__name__)


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
