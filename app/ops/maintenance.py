"""Do the database and the files agree? Checks return findings; each finding names its repair.

The checks are app.ops.checks, the repairs app.ops.repairs; this module is the server's start-up
sync. Both users share them:
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

from sqlalchemy.orm import Session

from app.ops.checks import check_temp, check_versions
from app.ops.datasets import check_expired_datasets
from app.ops.repairs import STARTUP_REPAIRS, repair
from app.store import DatasetFiles, Store, StoreUnavailable

log = logging.getLogger(__name__)


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
