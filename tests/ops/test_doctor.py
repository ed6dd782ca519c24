"""`prompthub doctor`: finds every disagreement between the database and the store, repairs what is
safe, and says OK (exit code 0) only when nothing remains."""

from __future__ import annotations

import json
import os
import socket
import time

from app.db import datasets as db_datasets
from app.db import job_queue
from app.db import jobs as db_jobs
from app.db import tasks as db_tasks
from app.ops.doctor import run_doctor
from tests.db.test_db import HEAD_REVISION
from tests.helpers import publish_task, session_for, store_for


def _kinds(findings, problem=True):
    return sorted(f.kind for f in findings if f.problem == problem)


def _break_everything(hub, settings):
    store = store_for(hub.settings)
    for name in ("alpha", "beta", "gamma", "delta"):
        publish_task(hub.settings, hub.backbone, name)
    publish_task(hub.settings, hub.backbone, "alpha", seed=1)  # alpha v2 active
    # a temp file left by a killed write (old), and one being written now (young: only a note)
    old = store.task_dir("alpha") / ".v0003.safetensors.abc123.tmp"
    old.write_bytes(b"half a checkpoint")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (store.task_dir("alpha") / ".v0004.safetensors.xyz.tmp").write_bytes(b"in progress")
    # beta: its file vanished
    store.path("beta", 1).unlink()
    # gamma: its file was replaced by other bytes
    store.path("gamma", 1).write_bytes(store.path("alpha", 2).read_bytes())  # seed 1: other bytes
    # delta: the sidecar is gone
    store.sidecar_path("delta", 1).unlink()
    # an orphan the database does not know, valid (written, then the process died before the row)
    store.write_version("epsilon", 1, _checkpoint(hub, "epsilon"))
    # an orphan that is junk, and an orphan sidecar
    (store.root / "zeta").mkdir()
    (store.root / "zeta" / "v0001.safetensors").write_bytes(b"\x00" * 64)
    (store.task_dir("alpha") / "v0007.json").write_text("{}")
    # a job left running by a worker process that no longer exists
    with session_for(hub.settings) as s:
        job = db_jobs.create_job(
            s, kind="single", payload={"task": "alpha"}, task_names=["alpha"], max_queued=50
        )
        job_queue.claim_next_job(s, f"{socket.gethostname()}:{_dead_pid()}:dead")
        ds = db_datasets.create_dataset(
            s,
            filename="x.jsonl",
            task_type=None,
            rows=1,
            columns=["text"],
            path=str(settings_path(settings) / "gone.jsonl"),
            sha256="0" * 64,
            size_bytes=1,
        )
    return job.id, ds.id


def settings_path(settings):
    from pathlib import Path

    return Path(settings.data_dir)


def _checkpoint(hub, name):
    from app.engine.checkpoint import checkpoint_bytes
    from tests.helpers import make_serving_task

    return checkpoint_bytes(make_serving_task(hub.backbone, seed=5), hub.backbone, {"source": "orphan"})


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_clean_store_is_ok(hub, settings):
    publish_task(hub.settings, hub.backbone, "alpha")
    report = run_doctor(settings)
    assert report.ok and report.found == []
    assert report.checked["versions"] == 1 and report.checked["files"] == 1
    assert "OK: the database and the store agree" in report.text()


def test_doctor_finds_and_repairs(hub, settings):
    job_id, ds_id = _break_everything(hub, settings)
    report = run_doctor(settings, temp_age_s=60)
    assert not report.ok
    assert _kinds(report.found) == sorted(
        [
            "temp_file",
            "missing_file",
            "sha_mismatch",
            "sidecar_missing",
            "orphan_file",
            "orphan_file",
            "orphan_sidecar",  # alpha/v0007.json
            "orphan_sidecar",  # beta/v0001.json, whose checkpoint vanished
            "stuck_job",
            "dataset_missing",
        ]
    )
    assert _kinds(report.found, problem=False) == ["temp_file"]  # the young one: maybe a write in progress
    assert "run `prompthub doctor --repair`" in report.text()

    fixed = run_doctor(settings, repair=True, temp_age_s=60)
    assert fixed.ok, fixed.text()
    text = "\n".join(fixed.repairs)
    for expected in (
        "removed temp file",
        "quarantined gamma v1",
        "quarantined unregistrable file zeta/v0001.safetensors",
        "removed orphan sidecar alpha/v0007.json",
        "removed orphan sidecar beta/v0001.json",
        "dropped beta v1",
        "registered epsilon v1",
        "rewrote the sidecar of delta v1",
        f"recovered stuck job {job_id}",
        f"dropped dataset {ds_id}",
    ):
        assert expected in text, (expected, text)

    again = run_doctor(settings)
    assert again.ok and _kinds(again.found) == []
    with session_for(hub.settings) as s:
        assert db_tasks.get_task(s, "beta") is None and db_tasks.get_task(s, "gamma") is None
        assert db_tasks.get_active_version(s, "epsilon").version == 1
        assert db_jobs.get_job(s, job_id).state == "queued"
    assert len(list((store_for(hub.settings).root / ".quarantine").iterdir())) == 2
    assert not (store_for(hub.settings).task_dir("alpha") / ".v0003.safetensors.abc123.tmp").exists()
    assert (
        store_for(hub.settings).task_dir("alpha") / ".v0004.safetensors.xyz.tmp"
    ).exists()  # young: left alone


def test_doctor_cli_json_and_exit_codes(hub, settings, monkeypatch, capsys):
    from app.cli import main
    from app.config import reset_settings

    publish_task(hub.settings, hub.backbone, "alpha")
    store_for(hub.settings).path("alpha", 1).write_bytes(b"corrupt")
    for key, value in {
        "PROMPTHUB_DATABASE_URL": settings.database_url,
        "PROMPTHUB_STORE_DIR": settings.store_dir,
        "PROMPTHUB_DATA_DIR": settings.data_dir,
    }.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    try:
        assert main(["doctor", "--json"]) == 1
        doc = json.loads(capsys.readouterr().out)
        assert doc["ok"] is False and [p["kind"] for p in doc["problems"]] == ["sha_mismatch"]
        assert main(["doctor", "--repair"]) == 0
        out = capsys.readouterr().out
        assert "quarantined alpha v1" in out and "OK: the database and the store agree" in out
        assert main(["doctor"]) == 0
    finally:
        reset_settings()


def test_doctor_migrates_a_database_that_is_behind(settings_factory, tmp_path):
    from app.db.session import current_revision, run_migrations

    settings = settings_factory(database_url=f"sqlite:///{tmp_path / 'old.db'}")
    run_migrations(settings.database_url, "0001")
    report = run_doctor(settings)
    assert not report.ok and _kinds(report.found) == ["schema"]
    assert run_doctor(settings, repair=True).ok
    assert current_revision(settings.database_url) == HEAD_REVISION


def test_orphan_without_sidecar_is_registered_with_one(hub, settings):
    """Killed after the checkpoint was renamed into place, before its sidecar and its row."""
    from app.engine.checkpoint import atomic_write

    publish_task(hub.settings, hub.backbone, "alpha")
    atomic_write(store_for(hub.settings).path("alpha", 2), _checkpoint(hub, "alpha"))
    report = run_doctor(settings)
    assert _kinds(report.found) == ["orphan_file"]
    fixed = run_doctor(settings, repair=True)
    assert fixed.ok, fixed.text()
    assert "rewrote the sidecar of alpha v2" in fixed.repairs
    assert run_doctor(settings).ok
