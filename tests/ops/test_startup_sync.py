"""The server's start-up sync (app.ops.maintenance.startup_sync): the database is made to agree with
the files, with the start-up's own subset of repairs."""

from __future__ import annotations

import pytest

from app import versions
from app.db import tasks as db_tasks
from app.engine.checkpoint import load_checkpoint_bytes, sha256_bytes
from app.ops.maintenance import startup_sync
from app.ops.repairs import STARTUP_REPAIRS
from app.store import PromptStore


@pytest.fixture
def store(tmp_path) -> PromptStore:
    return PromptStore(tmp_path / "prompts_store")


def test_sync_registers_shipped_versions(store, session_factory, tiny_backbone, make_checkpoint):
    v1 = make_checkpoint(meta={"source": "shipped", "metrics": {"accuracy": 0.7}})
    v2 = make_checkpoint(labels=("a", "b", "c"), meta={"metrics": {"accuracy": 0.8}})
    store.write_version("sent", 1, v1, {})
    store.write_version("sent", 2, v2, {})
    (store.root / "sent" / "v0002.json").unlink()  # a crash before the sidecar: still registered
    with session_factory() as s:
        changes = startup_sync(s, store)
        assert "registered sent v1" in changes and "registered sent v2" in changes
        assert "activated sent v2" in changes
        task = db_tasks.get_task(s, "sent")
        assert task.task_type == "classification" and task.active_version == 2
        assert task.labels == ["a", "b", "c"]
        row = db_tasks.get_version(s, "sent", 1)
        assert row.sha256 == sha256_bytes(v1) and row.size_bytes == len(v1)
        assert row.file == "sent/v0001.safetensors" and row.source == "shipped"
        assert row.metrics == {"accuracy": 0.7} and row.spec["labels"] == ["neg", "pos"]
        # what the DB records loads back through the store
        data = store.read_version("sent", 1, row.sha256)
        assert load_checkpoint_bytes(data, tiny_backbone, expected_sha256=row.sha256).spec.labels == [
            "neg",
            "pos",
        ]
        # idempotent
        assert startup_sync(s, store) == []
        # an active version chosen by hand is kept
        db_tasks.activate_version(s, "sent", 1)
        assert startup_sync(s, store) == []
        assert db_tasks.get_task(s, "sent").active_version == 1


def test_sync_skips_corrupt_and_foreign_files(store, session_factory, tiny_backbone, make_checkpoint):
    good = make_checkpoint()
    stored = store.write_version("sent", 1, good, {})
    stored.path.write_bytes(good[:-4] + b"XXXX")  # no longer matches its sidecar
    store.write_version("junk", 1, b"not a checkpoint", {})
    with session_factory() as s:
        assert startup_sync(s, store) == []
        assert db_tasks.list_tasks(s) == []


def _add_row(s, store, name, version, data=None, sha="00" * 32, size=1):
    db_tasks.add_version(
        s,
        name=name,
        task_type="classification",
        labels=["neg", "pos"],
        file=store.rel_path(name, version),
        sha256=sha,
        size_bytes=size,
        spec={"task_type": "classification", "labels": ["neg", "pos"]},
        metrics={},
        training={},
        source="test",
    )


def _rows(s) -> dict[str, tuple[int | None, list[int]]]:
    return {
        t.name: (t.active_version, [v.version for v in db_tasks.get_versions(s, t.name)])
        for t in db_tasks.list_tasks(s)
    }


def test_startup_reports_missing_files_and_deletes_nothing(store, session_factory, make_checkpoint, caplog):
    """A file gone at start-up is logged; its row, its task and the active version stay (the doctor
    drops them with --repair)."""
    with session_factory() as s:
        for v in (1, 2):
            st = store.write_version("sent", v, make_checkpoint(), {})
            _add_row(s, store, "sent", v, sha=st.sha256, size=st.size_bytes)
        _add_row(s, store, "gone", 1)
        assert db_tasks.get_task(s, "sent").active_version == 2
        store.delete_version("sent", 2)
        before = _rows(s)
        with caplog.at_level("WARNING"):
            assert startup_sync(s, store) == []
        assert _rows(s) == before == {"gone": (1, [1]), "sent": (2, [1, 2])}
        assert "missing_file sent v2" in caplog.text and "missing_file gone v1" in caplog.text
        # the explicit repair still drops them
        from app.ops.checks import check_versions
        from app.ops.repairs import repair

        changes = repair(s, store, check_versions(s, store, deep=True))
        assert "dropped sent v2: its file is missing from the store" in changes
        assert "activated sent v1" in changes
        assert "dropped task gone: no version left in the store" in changes
        assert _rows(s) == {"sent": (1, [1])}


@pytest.mark.parametrize("how", ["missing", "empty", "mistyped"])
def test_start_with_a_missing_or_empty_store_keeps_every_row(
    tmp_path, db_url, session_factory, make_checkpoint, caplog, how
):
    """An unmounted / missing / mistyped store folder at start: every row survives (SQLite and
    PostgreSQL), and once the folder is back the tasks are served as before."""
    from app.config import Settings
    from app.main import _prepare_database

    real = PromptStore(tmp_path / "prompts_store")
    with session_factory() as s:
        for name in ("alpha", "beta"):
            for _ in range(2):
                versions.publish(s, real, name, make_checkpoint(), source="test")
        before = _rows(s)
    assert before == {"alpha": (2, [1, 2]), "beta": (2, [1, 2])}
    if how == "missing":
        bad = PromptStore(tmp_path / "unmounted")
    elif how == "empty":
        bad = PromptStore(tmp_path / "empty")
        bad.root.mkdir()
    else:
        bad = PromptStore(tmp_path / "prompts_stor")
    settings = Settings(database_url=db_url, store_dir=str(bad.root), embedded_worker=False)
    with caplog.at_level("WARNING"):
        _prepare_database(settings, session_factory, bad)
    assert "is it mounted" in caplog.text
    with session_factory() as s:
        assert _rows(s) == before
        # the folder is back: nothing to do, and the active versions are what they were
        assert startup_sync(s, real) == []
        assert _rows(s) == before
        assert versions.resolve(s, "alpha")[0] == 2


def test_a_rollback_survives_a_restart(store, session_factory, make_checkpoint):
    """Rolled back to v1: neither a normal restart, nor one with v1's file (or the whole store)
    missing for a while, brings v2 back."""
    with session_factory() as s:
        for _ in range(2):
            versions.publish(s, store, "sent", make_checkpoint(), source="test")
        versions.activate(s, "sent", 1)
        assert startup_sync(s, store) == []
        assert db_tasks.get_task(s, "sent").active_version == 1
        # v1's file is away during a start (an unmounted volume), then back
        p = store.path("sent", 1)
        away = p.with_name("away")
        p.rename(away)
        assert startup_sync(s, store) == []
        assert db_tasks.get_task(s, "sent").active_version == 1
        away.rename(p)
        # the whole store is away during a start, then back
        moved = store.root.with_name("moved")
        store.root.rename(moved)
        startup_sync(s, store)
        moved.rename(store.root)
        assert startup_sync(s, store) == []
        assert _rows(s) == {"sent": (1, [1, 2])}
        assert versions.resolve(s, "sent") == (1, db_tasks.get_version(s, "sent", 1).sha256)


def test_startup_policy_is_the_documented_list():
    assert STARTUP_REPAIRS == ("delete_temp", "register", "expire_dataset")


def test_startup_leaves_corrupt_registered_files_to_the_doctor(
    store, session_factory, make_checkpoint, caplog
):
    import os
    import time

    blob = make_checkpoint()
    with session_factory() as s:
        from app import versions

        versions.publish(s, store, "sent", blob, source="test")
        tmp = store.task_dir("sent") / ".v0002.safetensors.x.tmp"
        tmp.write_bytes(b"partial")
        old = time.time() - 3600
        os.utime(tmp, (old, old))
        changes = startup_sync(s, store)
        assert changes == [f"removed temp file {tmp}"]
        assert not tmp.exists()
        # no hashing of registered files at start-up: a corrupt one is found by the doctor
        store.path("sent", 1).write_bytes(b"corrupt")
        assert startup_sync(s, store) == []
        assert db_tasks.get_task(s, "sent").active_version == 1


def test_dataset_retention_at_start(store, session_factory, tmp_path):
    """Datasets past PROMPTHUB_DATASET_RETENTION_DAYS that no queued or running job uses are deleted
    at start (row, and file unless another upload shares it); the others stay."""
    from datetime import timedelta

    from app.db import datasets as db_datasets
    from app.db import jobs as db_jobs
    from app.db.models import utcnow

    data = tmp_path / "datasets"
    data.mkdir()

    def make(name: str, days: float, content: str):
        p = data / f"{name * 64}.jsonl"
        p.write_text(content)
        ds = db_datasets.create_dataset(
            s,
            filename="x.jsonl",
            task_type=None,
            rows=1,
            columns=[],
            path=str(p),
            sha256=name * 64,
            size_bytes=1,
        )
        ds.created_at = utcnow() - timedelta(days=days)
        s.commit()
        return ds.id, p

    with session_factory() as s:
        old, old_path = make("a", 40, "1")
        used, used_path = make("b", 40, "2")
        young, young_path = make("c", 1, "3")
        db_jobs.create_job(
            s, kind="single", payload={"train": {"dataset_id": used}}, task_names=["t"], max_queued=10
        )
        assert startup_sync(s, store) == []  # no retention given: kept forever
        changes = startup_sync(s, store, dataset_retention_days=30)
        assert changes == [f"deleted dataset {old}: older than the retention"]
        assert {d.id for d in db_datasets.list_datasets(s)} == {used, young}
        assert not old_path.exists() and used_path.exists() and young_path.exists()


def test_a_file_its_job_did_not_publish_is_not_registered(store, session_factory, make_checkpoint):
    """A worker killed between a version's file and its row leaves a complete checkpoint whose job is
    re-run (or failed): the start-up must not serve it; a job's published file, or one from a job
    this database does not know (a store moved to a new database), is registered."""
    from app.db import jobs as db_jobs
    from app.ops.checks import check_versions

    with session_factory() as s:
        job = db_jobs.create_job(s, kind="single", payload={}, task_names=["sent"], max_queued=10)
        store.write_version("sent", 1, make_checkpoint(meta={"source": f"job:{job.id}"}), {})
        store.write_version("other", 1, make_checkpoint(meta={"source": "job:not-in-this-database"}), {})
        changes = startup_sync(s, store)
        assert "registered other v1" in changes and db_tasks.get_task(s, "sent") is None
        orphan = [f for f in check_versions(s, store, deep=True) if f.where == "sent v1"]
        assert orphan and orphan[0].repair == "quarantine_orphan" and job.id in orphan[0].message

        # once the job has published that version (its result names it), the file is its own
        db_jobs.finish_job(s, job.id, "succeeded", result={"sent": 1})
        assert "registered sent v1" in startup_sync(s, store)
