"""`prompthub doctor [--repair] [--json]`: do the database and the prompt store agree?

Checks (each problem has a `kind`):

- ``schema``: the database is not at the newest migration (repair: migrate);
- ``temp_file``: a temp file left by an interrupted write, in the store or the datasets folder, older
  than ``--temp-age`` seconds (younger ones may be a write in progress and are only noted)
  (repair: delete);
- ``missing_file``: a version in the database whose file is not in the store (repair: drop the row);
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
  (repair: drop the row; a changed file is quarantined).

Repair reuses `sync_store_to_db` and `recover_stale_jobs`, then checks again: the exit code is 0 only
when no problem remains.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings, get_settings

log = logging.getLogger(__name__)

_TEMP_FILE = re.compile(r"^\..+\.tmp$")
_SIDECAR = re.compile(r"^v(\d{4,})\.json$")
QUARANTINE = ".quarantine"


@dataclass
class Finding:
    kind: str
    where: str
    message: str
    problem: bool = True  # False: a note (e.g. a young temp file that may be a write in progress)

    def line(self) -> str:
        tag = "PROBLEM" if self.problem else "note"
        return f"{tag:8s} {self.kind:18s} {self.where}: {self.message}"


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
            "found": [asdict(f) for f in self.found],
            "repaired": self.repaired,
            "repairs": self.repairs,
            "problems": [asdict(f) for f in self.problems],
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


class _Doctor:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: Callable[[], Any],
        store: Any,
        temp_age_s: float,
        backbone_identity: Any | None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.store = store
        self.temp_age_s = temp_age_s
        self.identity = backbone_identity
        self.checked: dict[str, int] = {}
        # what repair needs, gathered by check()
        self._temp: list[Path] = []
        self._quarantine: list[tuple[str, int]] = []
        self._orphans_bad: list[Path] = []
        self._sidecars: list[tuple[str, int]] = []
        self._orphan_sidecars: list[Path] = []
        self._paths: list[tuple[str, int]] = []
        self._datasets: list[tuple[str, Path | None]] = []
        self._needs_sync = False
        self._stuck = False
        self._schema_behind = False

    # ------------------------------------------------------------------ check
    def check(self) -> list[Finding]:
        found: list[Finding] = []
        found += self._check_schema()
        if self._schema_behind:
            return found
        found += self._check_temp()
        found += self._check_versions()
        found += self._check_jobs()
        found += self._check_datasets()
        return found

    def _check_schema(self) -> list[Finding]:
        from alembic.script import ScriptDirectory

        from app.db.session import alembic_config, current_revision

        url = self.settings.database_url
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        current = current_revision(url)
        self._schema_behind = current != head
        if self._schema_behind:
            return [Finding("schema", "database", f"at revision {current}, the newest is {head}")]
        return []

    def _check_temp(self) -> list[Finding]:
        found = []
        now = time.time()
        for root in (Path(self.settings.store_dir), Path(self.settings.data_dir)):
            if not root.is_dir():
                continue
            for dirpath, _dirs, files in os.walk(root):
                for name in files:
                    if not _TEMP_FILE.match(name):
                        continue
                    p = Path(dirpath) / name
                    try:
                        age = now - p.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age >= self.temp_age_s:
                        self._temp.append(p)
                        found.append(
                            Finding("temp_file", str(p), f"left by an interrupted write {age:.0f}s ago")
                        )
                    else:
                        found.append(
                            Finding(
                                "temp_file", str(p), f"{age:.0f}s old: a write in progress?", problem=False
                            )
                        )
        return found

    def _check_versions(self) -> list[Finding]:
        from app.db import repo
        from app.engine.checkpoint import CheckpointError, read_metadata

        found: list[Finding] = []
        on_disk = {(e.task, e.version): e for e in self.store.scan(verify=True)}
        with self.sessionmaker() as s:
            tasks = repo.list_tasks(s)
            rows = {(v.task_name, v.version): v for t in tasks for v in repo.get_versions(s, t.name)}
            actives = {t.name: t.active_version for t in tasks}
        self.checked["versions"] = len(rows)
        self.checked["files"] = len(on_disk)
        self.checked["tasks"] = len(actives)

        for (task, version), row in sorted(rows.items()):
            where = f"{task} v{version}"
            entry = on_disk.get((task, version))
            expected_rel = self.store.rel_path(task, version)
            if row.file != expected_rel:
                self._paths.append((task, version))
                found.append(
                    Finding("path_mismatch", where, f"recorded file {row.file!r}, expected {expected_rel!r}")
                )
            if entry is None:
                self._needs_sync = True
                found.append(
                    Finding("missing_file", where, f"the file {expected_rel} is missing from the store")
                )
                continue
            if entry.sha256 != row.sha256 or entry.size_bytes != row.size_bytes:
                self._quarantine.append((task, version))
                found.append(
                    Finding(
                        "sha_mismatch",
                        where,
                        f"the file's sha256 {entry.sha256[:12]}… ({entry.size_bytes} bytes) differs from the "
                        f"database's {row.sha256[:12]}… ({row.size_bytes} bytes): corrupt or replaced",
                    )
                )
                continue
            try:
                doc = read_metadata(entry.path)
            except (CheckpointError, OSError) as e:
                self._quarantine.append((task, version))
                found.append(Finding("bad_file", where, f"not a readable checkpoint: {e}"))
                continue
            if self.identity is not None and not self.identity.matches(doc.get("backbone") or {}):
                want = (doc.get("backbone") or {}).get("name")
                found.append(
                    Finding(
                        "backbone_mismatch",
                        where,
                        f"trained on backbone {want!r}, not the configured {self.identity.name!r}",
                    )
                )
            side = entry.sidecar
            if side is None:
                self._sidecars.append((task, version))
                found.append(Finding("sidecar_missing", where, "no JSON sidecar next to the checkpoint"))
            elif side.get("sha256") != entry.sha256 or side.get("size_bytes") != entry.size_bytes:
                self._sidecars.append((task, version))
                found.append(
                    Finding("sidecar_mismatch", where, "the sidecar's sha256 or size differs from the file")
                )

        for (task, version), entry in sorted(on_disk.items()):
            if (task, version) in rows:
                continue
            where = f"{task} v{version}"
            side_sha = (entry.sidecar or {}).get("sha256")
            reason = None
            if side_sha and side_sha != entry.sha256:
                reason = "its sha256 differs from its sidecar's"
            else:
                try:
                    doc = read_metadata(entry.path)
                    if not (doc.get("spec") or {}).get("task_type"):
                        reason = "its metadata holds no task spec"
                except (CheckpointError, OSError) as e:
                    reason = str(e)
            if reason is None:
                self._needs_sync = True
                found.append(
                    Finding(
                        "orphan_file",
                        where,
                        "in the store but not in the database (valid: can be registered)",
                    )
                )
            else:
                self._orphans_bad.append(entry.path)
                found.append(
                    Finding("orphan_file", where, f"in the store but not in the database, and {reason}")
                )

        root = Path(self.store.root)
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if not d.is_dir() or not re.fullmatch(repo.TASK_NAME_RE, d.name):
                    continue
                for p in sorted(d.iterdir()):
                    m = _SIDECAR.match(p.name)
                    if m and not p.with_suffix(".safetensors").exists():
                        self._orphan_sidecars.append(p)
                        found.append(
                            Finding(
                                "orphan_sidecar", f"{d.name}/{p.name}", "a sidecar without its checkpoint"
                            )
                        )

        versions_of: dict[str, list[int]] = {}
        for task, version in rows:
            versions_of.setdefault(task, []).append(version)
        for name, active in sorted(actives.items()):
            have = versions_of.get(name, [])
            if not have:
                self._needs_sync = True
                found.append(Finding("empty_task", name, "the task has no version"))
            elif active not in have:
                self._needs_sync = True
                found.append(Finding("no_active_version", name, f"active version {active} does not exist"))
        return found

    def _stale_jobs(self) -> list[Any]:
        from datetime import timedelta

        from sqlalchemy import select

        from app.db import repo
        from app.db.models import RUNNING, Job, utcnow

        cutoff = utcnow() - timedelta(seconds=self.settings.job_stale_s)
        with self.sessionmaker() as s:
            running = list(s.scalars(select(Job).where(Job.state == RUNNING)))
        self.checked["jobs_running"] = len(running)
        return [
            j
            for j in running
            if (j.heartbeat_at or j.started_at or j.created_at) < cutoff
            or repo.worker_process_gone(j.worker_id)
        ]

    def _check_jobs(self) -> list[Finding]:
        found = []
        for j in self._stale_jobs():
            self._stuck = True
            beat = j.heartbeat_at.isoformat() if j.heartbeat_at else "never"
            found.append(
                Finding(
                    "stuck_job",
                    f"job {j.id}",
                    f"running on {j.worker_id}, which is gone (last heartbeat {beat})",
                )
            )
        return found

    def _check_datasets(self) -> list[Finding]:
        from sqlalchemy import select

        from app.db.models import Dataset
        from app.engine.checkpoint import sha256_file

        found = []
        with self.sessionmaker() as s:
            rows = list(s.scalars(select(Dataset)))
        self.checked["datasets"] = len(rows)
        for ds in rows:
            p = Path(ds.path)
            if not p.is_file():
                self._datasets.append((ds.id, None))
                found.append(Finding("dataset_missing", f"dataset {ds.id}", f"its file {p} is missing"))
            elif sha256_file(p) != ds.sha256:
                self._datasets.append((ds.id, p))
                found.append(Finding("dataset_mismatch", f"dataset {ds.id}", f"its file {p} has changed"))
        return found

    # ------------------------------------------------------------------ repair
    def _quarantine_file(self, path: Path, label: str) -> str | None:
        if not path.exists():
            return None
        qdir = Path(self.store.root) / QUARANTINE
        qdir.mkdir(parents=True, exist_ok=True)
        dest = qdir / f"{label}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}.bad"
        shutil.move(str(path), dest)
        return str(dest)

    def repair(self) -> list[str]:
        from app.db import repo
        from app.db.models import Dataset
        from app.serving.store import sync_store_to_db

        done: list[str] = []
        for p in self._temp:
            try:
                p.unlink()
                done.append(f"removed temp file {p}")
            except FileNotFoundError:
                pass
        for task, version in self._quarantine:
            dest = self._quarantine_file(self.store.path(task, version), f"{task}.v{version:04d}.safetensors")
            self.store.sidecar_path(task, version).unlink(missing_ok=True)
            if dest:
                done.append(f"quarantined {task} v{version} to {dest}")
            self._needs_sync = True
        for p in self._orphans_bad:
            dest = self._quarantine_file(p, f"{p.parent.name}.{p.name}")
            p.with_suffix(".json").unlink(missing_ok=True)
            if dest:
                done.append(f"quarantined unregistrable file {p.parent.name}/{p.name} to {dest}")
        for p in self._orphan_sidecars:
            p.unlink(missing_ok=True)
            done.append(f"removed orphan sidecar {p.parent.name}/{p.name}")
        if self._paths:
            with self.sessionmaker() as s:
                for task, version in self._paths:
                    row = repo.get_version(s, task, version)
                    if row is not None:
                        row.file = self.store.rel_path(task, version)
                        done.append(f"rewrote the recorded file of {task} v{version}")
                s.commit()
        if self._needs_sync:
            with self.sessionmaker() as s:
                done += sync_store_to_db(s, self.store)
                s.commit()
        if self._needs_sync:  # orphans just registered may lack their sidecar (killed between the two writes)
            self._sidecars += [
                (e.task, e.version) for e in self.store.scan(verify=False) if e.sidecar is None
            ]
        for task, version in dict.fromkeys(self._sidecars):
            if self._rewrite_sidecar(task, version):
                done.append(f"rewrote the sidecar of {task} v{version}")
        if self._stuck:
            with self.sessionmaker() as s:
                ids = repo.recover_stale_jobs(
                    s,
                    stale_after_s=self.settings.job_stale_s,
                    on_crash=self.settings.on_crash,
                    max_attempts=self.settings.max_job_attempts,
                )
            done += [f"recovered stuck job {i} ({self.settings.on_crash})" for i in ids]
        if self._datasets:
            with self.sessionmaker() as s:
                for ds_id, path in self._datasets:
                    row = s.get(Dataset, ds_id)
                    if row is not None:
                        s.delete(row)
                        done.append(f"dropped dataset {ds_id}")
                    if path is not None and path.exists():
                        self._quarantine_file(path, f"dataset.{path.name}")
                s.commit()
        return done

    def _rewrite_sidecar(self, task: str, version: int) -> bool:
        from app.engine.checkpoint import CheckpointError, atomic_write, read_metadata, sha256_file

        path = self.store.path(task, version)
        if not path.is_file():
            return False
        try:
            meta = read_metadata(path)
        except (CheckpointError, OSError):
            return False
        sidecar = {
            "task": task,
            "version": version,
            "file": path.name,
            "sha256": sha256_file(path),
            "size_bytes": path.stat().st_size,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": meta,
            "rewritten_by": "prompthub doctor",
        }
        atomic_write(
            path.with_suffix(".json"),
            (json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n").encode(),
        )
        return True


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
    from app.serving.store import PromptStore

    sessionmaker = sessionmaker or get_sessionmaker(settings.database_url)
    store = store or PromptStore(settings.store_dir)
    identity = None
    if check_backbone:
        from app.engine.backbone import load_backbone

        identity = load_backbone(settings.backbone).identity
    report = Report(
        store=str(Path(settings.store_dir).resolve()),
        database=make_url(normalize_url(settings.database_url)).render_as_string(),
    )
    doc = _Doctor(settings, sessionmaker, store, temp_age_s, identity)
    report.found = doc.check()
    report.checked = dict(doc.checked)
    if repair:
        report.repaired = True
        if doc._schema_behind:  # migrate first, then look at everything else
            from app.db.session import run_migrations

            run_migrations(settings.database_url)
            report.repairs.append("migrated the database to the newest revision")
            doc = _Doctor(settings, sessionmaker, store, temp_age_s, identity)
            report.found += doc.check()
        report.repairs += doc.repair()
        again = _Doctor(settings, sessionmaker, store, temp_age_s, identity)
        report.remaining = again.check()
        report.checked = dict(again.checked)
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
