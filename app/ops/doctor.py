"""`prompthub doctor [--repair] [--json]`: do the database and the prompt store agree?

Checks (each problem has a `kind`):

- ``schema``: the database is not at the newest migration (repair: migrate);
- ``temp_file``: a temp file left by an interrupted write, in the store or the datasets folder, older
  than ``--temp-age`` seconds (younger ones may be a write in progress and are only noted)
  (repair: delete);
- ``missing_file``: a version in the database whose file is not in the store (repair: drop the row;
  none when the store holds no version at all: an unmounted folder or the wrong bucket must not
  empty the registry);
- ``sha_mismatch``: a version whose file's sha256 or size differs from the database's (repair: move the
  file to ``<store>/.quarantine/`` and drop the row);
- ``bad_file``: a version whose file is not a readable PromptHub checkpoint (repair: as sha_mismatch);
- ``backbone_mismatch`` (with ``--check-backbone``): a version trained on another backbone than the
  configured one (not repaired: the operator chooses the backbone or removes the task);
- ``path_mismatch``: a row whose recorded file is not ``<task>/vNNNN.safetensors`` (repair: rewrite it);
- ``sidecar_missing`` / ``sidecar_mismatch``: the JSON sidecar is absent or disagrees with the file
  (repair: rewrite it from the file);
- ``orphan_sidecar``: a sidecar without its checkpoint (repair: delete);
- ``orphan_file``: a checkpoint in the store that the database does not list (repair: register it when
  its header is a valid checkpoint and agrees with its sidecar, else quarantine it);
- ``no_active_version`` / ``empty_task``: a task whose active version does not exist, or that has no
  version (repair: activate the newest / drop the task);
- ``stuck_job``: a job 'running' whose worker is gone (heartbeat older than PROMPTHUB_JOB_STALE_S, or
  its process on this host no longer exists) (repair: re-queue or fail it, per PROMPTHUB_ON_CRASH);
- ``dataset_missing`` / ``dataset_mismatch``: an uploaded dataset whose file is gone or changed
  (repair: drop the row; a changed file is quarantined);
- ``dataset_expired``: an uploaded dataset older than PROMPTHUB_DATASET_RETENTION_DAYS that no queued
  or running job refers to (repair: delete its row, and its file unless another upload shares it;
  the server's start-up does the same).

The checks and repairs live in app.ops.checks and app.ops.repairs (the server's start-up uses the
same, with a smaller set of repairs). Repair migrates first when needed, then checks again: the exit code is 0
only when no problem remains.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings, get_settings
from app.ops.checks import check_jobs, check_temp, check_versions
from app.ops.datasets import check_datasets, check_expired_datasets
from app.ops.findings import Finding
from app.ops.repairs import JobRecovery
from app.ops.repairs import repair as repair_findings
from app.store import DatasetFiles, Store, open_datasets, open_store

log = logging.getLogger(__name__)


@dataclass
class Report:
    store: str
    database: str
    checked: dict[str, int] = field(default_factory=dict)
    found: list[Finding] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)
    repaired: bool = False

    @property
    def problems(self) -> list[Finding]:
        return [f for f in (self.remaining if self.repaired else self.found) if f.problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "store": self.store,
            "database": self.database,
            "checked": self.checked,
            "found": [f.to_dict() for f in self.found],
            "repaired": self.repaired,
            "repairs": self.repairs,
            "problems": [f.to_dict() for f in self.problems],
        }

    def text(self) -> str:
        out = [f"prompthub doctor: store {self.store}, database {self.database}"]
        c = self.checked
        out.append(
            f"checked {c.get('versions', 0)} versions in the database, {c.get('files', 0)} checkpoint files "
            f"in the store, {c.get('jobs_running', 0)} running jobs, {c.get('datasets', 0)} datasets"
        )
        out += [f.line() for f in self.found]
        if self.repaired:
            out += [f"repaired {r}" for r in self.repairs] or ["nothing to repair"]
            out += [f"still   {f.line()}" for f in self.remaining if f.problem]
        if self.ok:
            out.append("OK: the database and the store agree")
        else:
            hint = "" if self.repaired else " (run `prompthub doctor --repair` to fix what is safe)"
            out.append(f"{len(self.problems)} problem(s) remain{hint}")
        return "\n".join(out)


def _check(
    settings: Settings,
    sessionmaker: Callable[[], Any],
    store: Store,
    temp_age_s: float,
    identity: Any,
    files: DatasetFiles | None = None,
) -> tuple[list[Finding], dict[str, int], bool]:
    """(findings, counts, schema behind). A database behind the newest migration is only reported:
    nothing else can be read reliably until it is migrated."""
    schema = _check_schema(settings.database_url)
    if schema:
        return schema, {}, True
    counts: dict[str, int] = {}
    roots = [*store.local_roots(), files.root if files is not None else Path(settings.data_dir)]
    found = check_temp(list(dict.fromkeys(roots)), temp_age_s)
    with sessionmaker() as s:
        found += check_versions(s, store, deep=True, identity=identity, counts=counts)
        found += check_jobs(s, settings.job_stale_s, counts)
        found += check_datasets(s, counts, files)
        found += check_expired_datasets(s, settings.dataset_retention_days)
    return found, counts, False


def _check_schema(url: str) -> list[Finding]:
    from alembic.script import ScriptDirectory

    from app.db.session import alembic_config, current_revision

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    current = current_revision(url)
    if current != head:
        return [
            Finding("schema", "database", f"at revision {current}, the newest is {head}", repair="migrate")
        ]
    return []


def run_doctor(
    settings: Settings,
    *,
    repair: bool = False,
    temp_age_s: float = 60.0,
    check_backbone: bool = False,
    sessionmaker: Callable[[], Any] | None = None,
    store: Any | None = None,
) -> Report:
    from sqlalchemy.engine import make_url

    from app.db.session import get_sessionmaker, normalize_url

    sessionmaker = sessionmaker or get_sessionmaker(settings.database_url)
    store = store or open_store(settings)
    files = open_datasets(settings, store) if store.kind == "s3" else DatasetFiles(settings.data_dir)
    identity = None
    if check_backbone:
        from app.engine.backbone import load_backbone

        identity = load_backbone(settings.backbone).identity
    report = Report(
        store=store.describe(),
        database=make_url(normalize_url(settings.database_url)).render_as_string(),
    )
    found, counts, behind = _check(settings, sessionmaker, store, temp_age_s, identity, files)
    report.found, report.checked = found, counts
    if repair:
        report.repaired = True
        if behind:  # migrate first, then look at everything else
            from app.db.session import run_migrations

            run_migrations(settings.database_url)
            report.repairs.append("migrated the database to the newest revision")
            found, counts, _ = _check(settings, sessionmaker, store, temp_age_s, identity, files)
            report.found += found
        jobs = JobRecovery(settings.job_stale_s, settings.on_crash, settings.max_job_attempts)
        with sessionmaker() as s:
            report.repairs += repair_findings(s, store, found, jobs=jobs, datasets=files)
        report.remaining, report.checked, _ = _check(
            settings, sessionmaker, store, temp_age_s, identity, files
        )
    return report


def doctor_command(args: argparse.Namespace) -> int:
    settings = get_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_doctor(
            settings,
            repair=bool(args.repair),
            temp_age_s=float(args.temp_age),
            check_backbone=bool(args.check_backbone),
        )
    except Exception as e:  # the database unreachable, say
        msg = f"prompthub doctor: could not run: {type(e).__name__}: {e}"
        if args.json:
            print(json.dumps({"ok": False, "error": msg}))
        else:
            print(msg, file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1
