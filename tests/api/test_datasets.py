"""Datasets: upload (streamed, file names checked), list, delete, and what a job's reference may
read; on SQLite and PostgreSQL where the database decides."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest

from app.db import datasets as db_datasets
from app.db import jobs as db_jobs
from app.db.session import get_sessionmaker

LINE = {"text": "a reasonably long training sentence about a card that has not arrived yet", "label": "pos"}


@pytest.fixture
def db_client(settings_factory, hub_factory, db_url):
    from app.main import create_app
    from tests.helpers import local_client

    settings = settings_factory(database_url=db_url)
    with local_client(create_app(settings, hub_factory(settings))) as c:
        c.settings = settings  # type: ignore[attr-defined]
        yield c


def _multipart(filename: bytes, content: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand (httpx percent-encodes control characters in file names)."""
    b = b"XxBoundaryxX"
    body = (
        b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--" + b + b"--\r\n"
    )
    return body, {"content-type": f"multipart/form-data; boundary={b.decode()}"}


def _upload(c, name: str, data: bytes, **form):
    return c.post("/datasets", files={"file": (name, io.BytesIO(data))}, data=form)


@pytest.mark.parametrize(
    "filename",
    [b"x" * 300 + b".jsonl", b"a\x00b.jsonl", b"a\x01b.jsonl"],
    ids=["300-chars", "nul", "control"],
)
def test_bad_upload_filenames_are_a_422_naming_the_field(db_client, filename):
    body, headers = _multipart(filename, json.dumps(LINE).encode() + b"\n")
    r = db_client.post("/datasets", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "file", "filename"]
    assert db_client.get("/datasets").json() == []


def test_a_255_character_filename_is_kept(db_client):
    name = "y" * 249 + ".jsonl"
    r = _upload(db_client, name, json.dumps(LINE).encode() + b"\n")
    assert r.status_code == 201, r.text and r.json()["filename"] == name


def test_list_and_delete_datasets(db_client):
    c = db_client
    data = (json.dumps(LINE) + "\n" + json.dumps({**LINE, "label": "neg"}) + "\n").encode()
    a = _upload(c, "a.jsonl", data, task_type="classification").json()
    b = _upload(c, "b.jsonl", data).json()  # the same bytes: one file, two rows
    assert [d["id"] for d in c.get("/datasets").json()] == [a["id"], b["id"]]
    with get_sessionmaker(c.settings.database_url)() as s:
        path = Path(db_datasets.get_dataset(s, a["id"]).path)
        job = db_jobs.create_job(
            s,
            kind="single",
            payload={"task": "t", "task_type": "classification", "train": {"dataset_id": a["id"]}},
            task_names=["t"],
            max_queued=10,
        )
    r = c.delete(f"/datasets/{a['id']}")
    assert r.status_code == 409 and job.id in r.json()["detail"]
    assert c.delete("/datasets/nope").status_code == 404
    assert c.delete(f"/datasets/{b['id']}").json() == {"deleted": b["id"]}
    assert path.exists()  # still a's
    with get_sessionmaker(c.settings.database_url)() as s:
        db_jobs.request_cancel(s, job.id)
    assert c.delete(f"/datasets/{a['id']}").status_code == 200
    assert not path.exists() and c.get("/datasets").json() == []
    assert list(Path(c.settings.data_dir).iterdir()) == []


def test_a_rejected_upload_leaves_no_file(client, settings):
    r = _upload(client, "bad.jsonl", b'{"text": "x", "label": "a"}\nnot json\n', task_type="classification")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "file"]
    big = _upload(client, "big.jsonl", b"x" * (settings.max_upload_bytes + 1))
    assert big.status_code == 413
    assert [p.name for p in Path(settings.data_dir).iterdir()] == []


@pytest.mark.parametrize("task_type", ["classification", None])
def test_upload_memory_is_bounded_by_chunks_not_the_file(settings, tmp_path, task_type):
    """An 8 MB upload is copied to disk a chunk at a time and parsed from the file a line at a time:
    the Python heap peaks at a small fraction of the file (it was ~20x the file)."""
    from starlette.datastructures import UploadFile

    from app.api.routes.datasets import upload_dataset
    from app.db.session import run_migrations
    from app.store import DatasetFiles

    run_migrations(settings.database_url)
    src = tmp_path / "big.jsonl"
    one = (json.dumps(LINE) + "\n").encode()
    src.write_bytes(one * (8_000_000 // len(one)))
    size = src.stat().st_size
    files = DatasetFiles(settings.data_dir)
    with get_sessionmaker(settings.database_url)() as s, open(src, "rb") as f:
        upload = UploadFile(file=f, filename="big.jsonl")
        tracemalloc.start()
        out = upload_dataset(None, s, settings, files, upload, task_type)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert out.rows == size // len(one) and out.size_bytes == size
    print(f"upload of {size} bytes (task_type={task_type}): Python heap peak {peak} bytes")
    assert peak < 3_000_000, f"peak {peak} bytes for a {size}-byte upload"


def test_train_refuses_more_labels_than_the_cap(settings_factory, hub_factory):
    """PROMPTHUB_MAX_LABELS: inline records with too many labels, or too many given labels, are a
    422 naming the field before anything is queued."""
    from app.main import create_app
    from tests.helpers import local_client

    settings = settings_factory(max_labels=3)
    records = [{"text": f"example {i}", "label": f"l{i}"} for i in range(4)]
    body = {"task": "many", "task_type": "classification", "train": {"records": records}}
    with local_client(create_app(settings, hub_factory(settings))) as c:
        r = c.post("/train", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "train"]
        assert "4 labels: a task may have at most 3" in r.json()["detail"][0]["msg"]
        r = c.post("/train", json={**body, "labels": ["a", "b", "c", "d"]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "labels"]
        assert c.post("/train", json={**body, "train": {"records": records[:3]}}).status_code == 202


def test_the_default_label_cap_is_a_few_thousand():
    from app.config import Settings
    from app.engine.data import parse_records
    from app.engine.model import SpecError
    from app.engine.options import validate_training

    assert Settings().max_labels == 5000
    examples = parse_records([{"text": str(i), "label": f"l{i}"} for i in range(5001)], "classification")
    with pytest.raises(SpecError, match="5001 labels"):
        validate_training("classification", {}, None, {"train": examples})
