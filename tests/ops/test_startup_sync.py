"""The server's start-up sync (app.ops.maintenance.startup_sync): the database is made to agree with
the files, with the start-up's own subset of repairs."""

from __future__ import annotations

import pytest

from app.db import tasks as db_tasks
from app.engine.checkpoint import load_checkpoint_bytes, sha256_bytes
from app.ops.maintenance import STARTUP_REPAIRS, startup_sync
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


def test_sync_drops_versions_whose_file_is_gone(store, session_factory, tiny_backbone, make_checkpoint):
    with session_factory() as s:
        for v in (1, 2):
            data = make_checkpoint()
            st = store.write_version("sent", v, data, {})
            db_tasks.add_version(
                s,
                name="sent",
                task_type="classification",
                labels=["neg", "pos"],
                file=store.rel_path("sent", v),
                sha256=st.sha256,
                size_bytes=st.size_bytes,
                spec={"task_type": "classification", "labels": ["neg", "pos"]},
                metrics={},
                training={},
                source="test",
            )
        db_tasks.add_version(
            s,
            name="gone",
            task_type="classification",
            labels=["x"],
            file="gone/v0001.safetensors",
            sha256="00" * 32,
            size_bytes=1,
            spec={},
            metrics={},
            training={},
            source="test",
        )
        assert db_tasks.get_task(s, "sent").active_version == 2
        store.delete_version("sent", 2)
        changes = startup_sync(s, store)
        assert "dropped sent v2: its file is missing from the store" in changes
        assert "activated sent v1" in changes
        assert "dropped task gone: no version left in the store" in changes
        assert db_tasks.get_task(s, "gone") is None
        assert [v.version for v in db_tasks.get_versions(s, "sent")] == [1]
        assert db_tasks.get_task(s, "sent").active_version == 1


def test_startup_policy_is_the_documented_list():
    assert STARTUP_REPAIRS == ("delete_temp", "register", "drop_row", "drop_task", "activate_newest")


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
