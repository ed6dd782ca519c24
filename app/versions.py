"""Task versions: the ONE place where the prompt store (bytes) and the database (rows) meet.

    publish   checkpoint bytes -> store file + sidecar -> version row -> optional activation
    register  a file already in the store -> version row (start-up sync, doctor)
    activate / delete_task / resolve

The file is always written before its row, so a row never points at a file that is not there;
a crash in between leaves a file without a row, which the start-up sync registers. A publish that
fails (the sidecar cannot be written, the row is refused, the database is down) removes the file it
wrote, and only that file (checked by its sha256): nothing is left for a start-up to register.
Two publishers of one task never share a number: a version file is created with a hard link that
fails when the name is taken (the S3 backend: a conditional PUT, If-None-Match), and the loser takes
the next number. The store is either backend (app.store.Store); only its methods reach the bytes.
Used by the worker, the API, app.ops and the tests' helpers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app import faults
from app.db import jobs as db_jobs
from app.db import tasks as db
from app.db.errors import Conflict, NotFound
from app.db.models import Task
from app.engine.checkpoint import CheckpointError, parse_header
from app.names import validate_task_name
from app.store import Store, StoreError, VersionTaken

log = logging.getLogger(__name__)

MAX_NUMBER_TRIES = 20  # two writers racing for the next version number: each retry takes the next


@dataclass(frozen=True)
class Published:
    task: str
    version: int
    sha256: str
    size_bytes: int


class VersionNotFound(NotFound):
    """No such task, or no such version of it (`version` None: the task or its active version)."""

    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        what = f"task {name!r}" if version is None else f"version {version} of task {name!r}"
        super().__init__(f"{what} not found")


class JobNotLive(Conflict):
    """The job publishing a version was cancelled (or its task deleted) meanwhile: nothing is
    published."""


class NotRegistrable(ValueError):
    """A file in the store that cannot be registered (corrupt, not a checkpoint, no task spec)."""


def _row_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """What a version row records, from a checkpoint header."""
    spec = doc.get("spec") or {}
    task_type = spec.get("task_type")
    if not task_type:
        raise NotRegistrable("its metadata holds no task spec")
    training = dict(doc.get("training") or {})
    if doc.get("data"):
        training.setdefault("data", doc["data"])
    return {
        "task_type": task_type,
        "labels": list(spec.get("labels") or []),
        "spec": spec,
        "metrics": doc.get("metrics") or {},
        "training": training,
    }


def publish(
    session: Session,
    store: Store,
    name: str,
    blob: bytes,
    *,
    source: str,
    activate: bool = True,
    job_id: str | None = None,
) -> Published:
    """Store `blob` (checkpoint bytes) as the next version of `name`, then register it (and activate
    it). Spec, metrics and training come from the checkpoint's header. Raises Conflict when the task
    exists with another task type, JobNotLive when `job_id` is given and that job is no longer
    running or was asked to cancel (deleting a task cancels its jobs): the row is added in the same
    transaction that checks the job, so a task deleted meanwhile does not come back. On any failure
    the file just written is removed again."""
    validate_task_name(name)
    header = parse_header(blob)
    fields = _row_fields(header)
    guard = None if job_id is None else (lambda s: _check_job_live(s, job_id))
    if job_id is not None:
        _check_job_live(session, job_id)
        session.rollback()
    for _ in range(MAX_NUMBER_TRIES):
        version = max(db.max_version(session, name), max(store.versions(name), default=0)) + 1
        session.rollback()  # end the read: the number is only a guess until the file is written
        try:
            stored = store.write_version(name, version, blob, header)
        except VersionTaken:
            continue  # another writer took this number: take the next
        faults.pause_point("publish:file-written")  # tests only: the file is written, its row is not
        try:
            db.add_version(
                session,
                name=name,
                file=store.rel_path(name, version),
                sha256=stored.sha256,
                size_bytes=stored.size_bytes,
                source=source,
                activate=activate,
                version=version,
                guard=guard,
                **fields,
            )
        except Conflict as e:
            session.rollback()
            row = None if isinstance(e, JobNotLive) else db.get_version(session, name, version)
            if row is not None and row.sha256 == stored.sha256:  # registered by a store sync meanwhile
                if activate:
                    db.activate_version(session, name, version)
                return Published(name, version, stored.sha256, stored.size_bytes)
            store.delete_own(name, version, stored.sha256)
            raise
        except BaseException:
            _discard(session, store, name, version, stored.sha256)
            raise
        return Published(name, version, stored.sha256, stored.size_bytes)
    raise StoreError(f"task {name!r}: could not find a free version number")


def _check_job_live(s: Session, job_id: str) -> None:
    state, cancel = db_jobs.lock_job_state(s, job_id)
    if state != "running" or cancel:
        why = "was cancelled or its task deleted" if cancel or state == "cancelled" else f"is {state}"
        raise JobNotLive(f"job {job_id} {why}: its version is not published")


def _discard(session: Session, store: Store, name: str, version: int, sha256: str) -> None:
    """A publish failed after its file was written (the database refused or is down): remove the
    file unless a row records it meanwhile (a store sync registered it)."""
    try:
        session.rollback()
        row = db.get_version(session, name, version)
        if row is not None and row.sha256 == sha256:
            return
    except Exception:  # the database is down: nobody can have registered it through it
        log.warning("publish of %s v%d failed; the database cannot be read", name, version, exc_info=True)
    store.delete_own(name, version, sha256)


def register(
    session: Session,
    store: Store,
    name: str,
    version: int,
    *,
    sha256: str | None = None,
    activate: bool = False,
) -> Published:
    """Register a version whose file is already in the store. The file's sha256 (computed when not
    given) must match its sidecar's, when there is one. Raises NotRegistrable or Conflict."""
    validate_task_name(name)
    try:
        digest = sha256 or store.hash_version(name, version)
        size = store.size_of(name, version)
    except (OSError, StoreError) as e:
        raise NotRegistrable(str(e)) from e
    sidecar_sha = (store.read_sidecar(name, version) or {}).get("sha256")
    if sidecar_sha and sidecar_sha != digest:
        raise NotRegistrable("its sha256 does not match its sidecar (corrupt file?)")
    try:
        doc = store.read_header(name, version)
    except (CheckpointError, OSError, StoreError) as e:
        raise NotRegistrable(str(e)) from e
    fields = _row_fields(doc)
    try:
        db.add_version(
            session,
            name=name,
            file=store.rel_path(name, version),
            sha256=digest,
            size_bytes=size,
            source=doc.get("source") or "store",
            activate=activate,
            version=version,
            **fields,
        )
    except (Conflict, ValueError):
        session.rollback()
        raise
    return Published(name, version, digest, size)


def activate(session: Session, name: str, version: int) -> Task:
    """Make `version` the one served (or roll back to it). Raises NotFound."""
    return db.activate_version(session, name, version)


def delete_task(session: Session, store: Store, name: str) -> int:
    """Delete the task: its queued and running jobs are cancelled first (a job finishing later is
    refused by publish and does not bring the task back), then its rows (from then on nobody is
    served it), then its files. Returns how many versions it had. Raises NotFound."""
    if db.get_task(session, name) is None:
        raise NotFound(f"no task named {name!r}")
    cancelled = db_jobs.cancel_jobs_of_task(session, name)
    if cancelled:
        log.info("task %s deleted: cancelled its jobs %s", name, ", ".join(cancelled))
    files = db.delete_task(session, name)
    try:
        store.delete_task(name)
    except Exception:  # the task is gone for clients; leftover files are only disk space
        log.exception("task %s deleted, but its files could not be removed", name)
    return len(files)


def resolve(session: Session, name: str, version: int | None = None) -> tuple[int, str]:
    """(version number, sha256) of `version` of `name`, its active version when None: one query, the
    per-request path of the server. Raises VersionNotFound."""
    exists, number, sha = db.resolve_version(session, name, version)
    if not exists or (number is None and version is None):
        raise VersionNotFound(name)
    if number is None or sha is None:
        raise VersionNotFound(name, version)
    return int(number), str(sha)


__all__ = [
    "JobNotLive",
    "NotRegistrable",
    "Published",
    "VersionNotFound",
    "activate",
    "delete_task",
    "publish",
    "register",
    "resolve",
]
