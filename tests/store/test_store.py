"""The prompt store on disk: versions, sidecars, scans, temp files; and the dataset files."""

from __future__ import annotations

import json
import os
import time

import pytest

from app.engine.checkpoint import sha256_bytes
from app.store import DatasetFiles, PromptStore, StoreError, read_sidecar


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


def test_rewrite_sidecar_from_the_file(store, make_checkpoint):
    blob = make_checkpoint()
    stored = store.write_version("sent", 1, blob, {"old": True})
    store.sidecar_path("sent", 1).unlink()
    assert store.rewrite_sidecar("sent", 1, by="test")
    side = read_sidecar(stored.path)
    assert side["sha256"] == stored.sha256 and side["size_bytes"] == len(blob)
    assert side["metadata"]["spec"]["task_type"] == "classification" and side["rewritten_by"] == "test"
    store.write_version("junk", 1, b"not a checkpoint", {})
    assert not store.rewrite_sidecar("junk", 1, by="test")
    assert not store.rewrite_sidecar("nope", 1, by="test")


def test_orphan_sidecars_and_quarantine(store):
    stored = store.write_version("sent", 1, b"a", {})
    stored.path.unlink()
    assert store.orphan_sidecars() == [store.sidecar_path("sent", 1)]
    other = store.write_version("sent", 2, b"b", {})
    dest = store.quarantine(other.path, "sent.v0002")
    assert dest and not other.path.exists() and (store.root / ".quarantine").is_dir()
    assert store.quarantine(other.path, "again") is None


def test_dataset_files_are_stored_by_content(tmp_path):
    files = DatasetFiles(tmp_path / "datasets")
    a = files.put(b'{"text": "x"}\n', ".jsonl")
    assert a.path == (tmp_path / "datasets" / f"{sha256_bytes(a.path.read_bytes())}.jsonl").resolve()
    assert a.size_bytes == len(b'{"text": "x"}\n') and a.path.read_bytes() == b'{"text": "x"}\n'
    assert files.put(b'{"text": "x"}\n', ".jsonl") == a
    assert not [p for p in a.path.parent.iterdir() if p.name.startswith(".")]
