"""The prompt store on disk and its reconciliation with the database."""

from __future__ import annotations

import json
import os
import time

import pytest

from app.db import repo
from app.engine.checkpoint import load_checkpoint_bytes, sha256_bytes
from app.serving.store import PromptStore, StoreError, sync_store_to_db

pytest_plugins = ["tests.service.conftest_db"]


@pytest.fixture
def store(tmp_path) -> PromptStore:
    return PromptStore(tmp_path / "prompts_store")


def test_write_and_read_version(store):
    data = b"\x00checkpoint bytes" * 10
    stored = store.write_version("sent", 1, data, {"spec": {"task_type": "classification"}})
    assert stored.path == store.root / "sent" / "v0001.safetensors"
    assert stored.sha256 == sha256_bytes(data) and stored.size_bytes == len(data)
    sidecar = json.loads((store.root / "sent" / "v0001.json").read_text())
    assert sidecar["sha256"] == stored.sha256 and sidecar["size_bytes"] == len(data)
    assert sidecar["metadata"]["spec"]["task_type"] == "classification"
    assert store.read_version("sent", 1, stored.sha256) == data
    assert store.read_version("sent", 1, None) == data
    assert store.rel_path("sent", 1) == "sent/v0001.safetensors"
    assert store.versions("sent") == [1]
    # no temp files left behind
    assert sorted(p.name for p in (store.root / "sent").iterdir()) == ["v0001.json", "v0001.safetensors"]


def test_write_refuses_to_replace(store):
    store.write_version("sent", 1, b"a", {})
    with pytest.raises(StoreError, match="already exists"):
        store.write_version("sent", 1, b"b", {})
    store.write_version("sent", 1, b"b", {}, overwrite=True)
    assert store.read_version("sent", 1, sha256_bytes(b"b")) == b"b"


def test_read_refuses_missing_and_mismatch(store):
    with pytest.raises(StoreError, match="missing"):
        store.read_version("sent", 1, "00" * 32)
    stored = store.write_version("sent", 1, b"original", {})
    stored.path.write_bytes(b"tampered")
    with pytest.raises(StoreError, match="sha256"):
        store.read_version("sent", 1, stored.sha256)


@pytest.mark.parametrize("name", ["../x", "A", "a/b", "..", ".", "", "a\\b", "/etc"])
def test_store_refuses_bad_task_names(store, name):
    with pytest.raises(ValueError, match="invalid task name"):
        store.write_version(name, 1, b"x", {})
    with pytest.raises(ValueError, match="invalid task name"):
        store.read_version(name, 1, None)
    with pytest.raises(ValueError, match="invalid task name"):
        store.delete_task(name)
    assert not (store.root.parent / "x").exists()


def test_bad_version_numbers(store):
    for v in (0, -1, True):
        with pytest.raises(ValueError):
            store.write_version("sent", v, b"x", {})


def test_delete(store):
    store.write_version("sent", 1, b"a", {})
    store.write_version("sent", 2, b"b", {})
    store.delete_version("sent", 1)
    assert store.versions("sent") == [2]
    store.delete_version("sent", 2)
    assert not (store.root / "sent").exists()
    store.write_version("ner", 1, b"a", {})
    store.delete_task("ner")
    assert not (store.root / "ner").exists()
    store.delete_task("ner")  # gone already: no error


def test_scan_and_cleanup_temp(store):
    store.write_version("sent", 1, b"a", {"x": 1})
    store.write_version("ner", 3, b"b", {})
    d = store.root / "sent"
    tmp_old = d / ".v0002.safetensors.abc123.tmp"
    tmp_new = d / ".v0003.safetensors.def456.tmp"
    tmp_old.write_bytes(b"partial")
    tmp_new.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(tmp_old, (old, old))
    (d / "notes.txt").write_text("ignored")
    (store.root / "Bad Name").mkdir()
    (store.root / "Bad Name" / "v0001.safetensors").write_bytes(b"x")

    found = store.scan()
    assert [(f.task, f.version) for f in found] == [("ner", 3), ("sent", 1)]
    sent = found[1]
    assert sent.sha256 == sha256_bytes(b"a") and sent.size_bytes == 1 and sent.sidecar["metadata"] == {"x": 1}
    assert sent.rel_path == "sent/v0001.safetensors"

    assert store.cleanup_temp() == [tmp_old]  # a write in progress elsewhere is left alone
    assert tmp_new.exists()
    assert store.cleanup_temp(min_age_s=0) == [tmp_new]
    assert not tmp_old.exists() and not tmp_new.exists()


def test_scan_of_missing_root(tmp_path):
    store = PromptStore(tmp_path / "nope")
    assert store.scan() == [] and store.cleanup_temp() == []


# ------------------------------------------------------------------------------ store <-> db


def test_sync_registers_shipped_versions(store, session_factory, svc_backbone, make_checkpoint):
    v1 = make_checkpoint(meta={"source": "shipped", "metrics": {"accuracy": 0.7}})
    v2 = make_checkpoint(labels=("a", "b", "c"), meta={"metrics": {"accuracy": 0.8}})
    store.write_version("sent", 1, v1, {})
    store.write_version("sent", 2, v2, {})
    (store.root / "sent" / "v0002.json").unlink()  # a crash before the sidecar: still registered
    with session_factory() as s:
        changes = sync_store_to_db(s, store)
        assert "registered sent v1" in changes and "registered sent v2" in changes
        assert "activated sent v2" in changes
        task = repo.get_task(s, "sent")
        assert task.task_type == "classification" and task.active_version == 2
        assert task.labels == ["a", "b", "c"]
        row = repo.get_version(s, "sent", 1)
        assert row.sha256 == sha256_bytes(v1) and row.size_bytes == len(v1)
        assert row.file == "sent/v0001.safetensors" and row.source == "shipped"
        assert row.metrics == {"accuracy": 0.7} and row.spec["labels"] == ["neg", "pos"]
        # what the DB records loads back through the store
        data = store.read_version("sent", 1, row.sha256)
        assert load_checkpoint_bytes(data, svc_backbone, expected_sha256=row.sha256).spec.labels == [
            "neg",
            "pos",
        ]
        # idempotent
        assert sync_store_to_db(s, store) == []
        # an active version chosen by hand is kept
        repo.activate_version(s, "sent", 1)
        assert sync_store_to_db(s, store) == []
        assert repo.get_task(s, "sent").active_version == 1


def test_sync_skips_corrupt_and_foreign_files(store, session_factory, svc_backbone, make_checkpoint):
    good = make_checkpoint()
    stored = store.write_version("sent", 1, good, {})
    stored.path.write_bytes(good[:-4] + b"XXXX")  # no longer matches its sidecar
    store.write_version("junk", 1, b"not a checkpoint", {})
    with session_factory() as s:
        assert sync_store_to_db(s, store) == []
        assert repo.list_tasks(s) == []


def test_sync_drops_versions_whose_file_is_gone(store, session_factory, svc_backbone, make_checkpoint):
    with session_factory() as s:
        for v in (1, 2):
            data = make_checkpoint()
            st = store.write_version("sent", v, data, {})
            repo.add_version(
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
        repo.add_version(
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
        assert repo.get_task(s, "sent").active_version == 2
        store.delete_version("sent", 2)
        changes = sync_store_to_db(s, store)
        assert "dropped sent v2: its file is missing from the store" in changes
        assert "activated sent v1" in changes
        assert "dropped task gone: no version left in the store" in changes
        assert repo.get_task(s, "gone") is None
        assert [v.version for v in repo.get_versions(s, "sent")] == [1]
        assert repo.get_task(s, "sent").active_version == 1
