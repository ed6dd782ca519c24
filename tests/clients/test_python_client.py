"""The Python client (clients/python, package prompthub_client) and `prompthub remote`, against a
real `prompthub serve` process (tiny random backbone, embedded worker, keys required)."""

from __future__ import annotations

import ast
import json
import os
import secrets
import subprocess
import sys

import httpx
import pytest

from app.db.session import REPO_ROOT
from tests.helpers import free_port, process_env, seed_store, start_server, stop_server, wait_ready

CLIENT_DIR = REPO_ROOT / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))  # the package as a fresh checkout has it (setup.sh installs it)

import prompthub_client as ph  # noqa: E402

RECORDS = [
    {"text": "a wonderful, moving film", "label": "pos"},
    {"text": "great acting and a fine story", "label": "pos"},
    {"text": "dull and far too long", "label": "neg"},
    {"text": "a boring mess", "label": "neg"},
]
HP = {"epochs": 1, "prefix_length": 4, "batch_size": 4, "max_length": 32}


# --------------------------------------------------------------------------- without a server


def test_the_client_imports_and_runs_without_torch(tmp_path):
    """Imported in a fresh interpreter where torch (and the server package) cannot be imported at all:
    the package, its CLI and a Client object still work."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "app", "transformers", "numpy", "sqlalchemy", "fastapi"):
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
import prompthub_client, prompthub_client.cli
c = prompthub_client.Client("http://127.0.0.1:9", key="ph_x")
assert c.url == "http://127.0.0.1:9"
try:
    prompthub_client.cli.main(["tasks", "--help"])
except SystemExit as e:
    assert e.code == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "app", "transformers", "numpy"))
assert not heavy, heavy
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(CLIENT_DIR)
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("ok")
    imported = {
        line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")
    }
    assert "prompthub_client.client" in imported and "httpx" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "numpy", "app")}


def test_the_client_package_imports_only_stdlib_and_httpx():
    allowed = set(sys.stdlib_module_names) | {"httpx", "tqdm", "prompthub_client"}
    for path in (CLIENT_DIR / "prompthub_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for n in names:
                assert n.split(".")[0] in allowed, f"{path.name} imports {n}"
    deps = (CLIENT_DIR / "pyproject.toml").read_text()
    assert 'dependencies = ["httpx>=0.27"]' in deps


def test_errors_carry_status_code_and_detail():
    err = ph.errors.error_for(409, {"detail": "used", "code": "idempotency_key_reused"})
    assert isinstance(err, ph.Conflict) and (err.status, err.code, err.detail) == (
        409,
        "idempotency_key_reused",
        "used",
    )
    err = ph.errors.error_for(422, {"detail": [{"loc": ["body", "inputs", 0], "msg": "bad", "type": "x"}]})
    assert isinstance(err, ph.InvalidInput) and err.code == "invalid_input" and "inputs.0: bad" in str(err)
    err = ph.errors.error_for(429, {"detail": "slow down"}, {"Retry-After": "3"})
    assert isinstance(err, ph.RateLimited) and err.retry_after == 3.0
    assert isinstance(ph.errors.error_for(503, "down"), ph.ServerError)


def test_progress_without_tqdm_prints_plain_lines():
    import io

    from prompthub_client.progress import Progress

    out = io.StringIO()
    bar = Progress("0123456789abcdef", use_tqdm=False, stream=out)
    bar.update("queued", {"step": 0, "total": None, "message": "queued"})
    bar.update("running", {"step": 3, "total": 10, "epoch": 0.3, "loss": 0.69314, "message": "training"})
    bar.update("running", {"step": 4, "total": 10, "epoch": 0.4, "loss": 0.6})  # throttled: < 2 s later
    bar.close("succeeded", {"step": 10, "total": 10, "epoch": 1.0, "loss": 0.5, "message": "done"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "job 01234567 queued: step 0"
    assert lines[1] == "job 01234567 running: step 3/10 epoch 0.30 loss 0.6931"
    assert lines[-1] == "job 01234567 succeeded: step 10/10 epoch 1.00 loss 0.5000 (done)"
    assert len(lines) == 3


# ------------------------------------------------------------------------------ a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_backbone_dir):
    from app.config import Settings

    tmp = tmp_path_factory.mktemp("client-server")
    token = "ph_" + secrets.token_urlsafe(32)
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'hub.db'}",
        store_dir=str(tmp / "store"),
        data_dir=str(tmp / "datasets"),
        backbone=str(tiny_backbone_dir),
        devices="cpu",
        embedded_worker=True,
        worker_poll_s=0.2,
        auth="required",
        auth_cache_s=0.0,
        bootstrap_admin_key=token,
        port=free_port(),
    )
    seed_store(settings, tiny_backbone_dir, ["seeded-cls", "seeded-tok", "seeded-qa"])
    log = tmp / "server.log"
    proc = start_server(settings, log, worker=True)
    base = f"http://127.0.0.1:{settings.port}"
    try:
        wait_ready(base, proc, log)
        yield base, token, settings
    finally:
        stop_server(proc)


@pytest.fixture
def hub(server):
    base, token, _ = server
    with ph.Client(base, token) as c:
        yield c


def test_predict_typed_and_errors(hub):
    out = hub.predict("seeded-cls", ["a fine day", {"text": "a bad day"}])
    assert isinstance(out, ph.Prediction) and out.task == "seeded-cls" and out.version == 1
    assert len(out.predictions) == 2 and "label" in out.predictions[0]
    qa = hub.predict("seeded-qa", {"question": "Who?", "context": "Ann wrote it."})  # one input alone
    assert len(qa.predictions) == 1 and "answer" in qa.predictions[0]
    with pytest.raises(ph.NotFound) as e:
        hub.predict("no-such-task", ["x"])
    assert e.value.status == 404 and e.value.code and "no-such-task" in str(e.value.detail)
    with pytest.raises(ph.InvalidInput) as e:
        hub.predict("seeded-cls", [])
    assert e.value.status == 422 and e.value.errors[0]["loc"][:2] == ["body", "inputs"]


def test_a_wrong_key_is_unauthorized(server):
    base, _, _ = server
    with ph.Client(base, "ph_" + "x" * 43) as c, pytest.raises(ph.Unauthorized) as e:
        list(c.tasks())
    assert e.value.status == 401


def test_key_from_the_environment(server, monkeypatch):
    base, token, _ = server
    monkeypatch.setenv("PROMPTHUB_KEY", token)
    with ph.Client(base) as c:
        assert {t.name for t in c.tasks()} >= {"seeded-cls", "seeded-tok", "seeded-qa"}


def test_train_wait_versions_activate(hub, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    job = hub.train("client-sent", "classification", train=data, eval=RECORDS, hyperparameters=HP)
    assert isinstance(job, ph.Job) and job.id
    info = job.wait(timeout=120, poll_s=0.2)
    assert isinstance(info, ph.JobInfo) and info.state == "succeeded" and info.result == {"client-sent": 1}
    assert "accuracy" in info.metrics and info.finished_at is not None
    assert f"job {job.id[:8]}" in capsys.readouterr().err  # the progress (bar or lines) on stderr
    # the file was uploaded as a dataset first
    assert any(d.filename == "train.jsonl" and d.rows == 4 for d in hub.datasets())
    # a second version that is kept but not served; then activated by hand
    info2 = hub.train(
        "client-sent", "classification", train=RECORDS, eval=RECORDS, hyperparameters=HP, activate="never"
    ).wait(timeout=120, poll_s=0.2, progress=False)
    assert info2.result == {"client-sent": 2}
    assert info2.promotion["client-sent"]["promoted"] is False
    task = hub.task("client-sent")
    assert isinstance(task, ph.Task) and task.active_version == 1
    assert [(v.version, v.active) for v in hub.versions("client-sent")] == [(1, True), (2, False)]
    assert hub.activate("client-sent", 2).active_version == 2
    assert hub.predict("client-sent", "great").version == 2
    with pytest.raises(ph.NotFound):
        hub.activate("client-sent", 9)
    # if_better against it, on the same eval data: promoted or not, it says why
    info3 = hub.train(
        "client-sent", "classification", train=RECORDS, eval=RECORDS, hyperparameters=HP, activate="if_better"
    ).wait(timeout=120, poll_s=0.2, progress=False)
    p = info3.promotion["client-sent"]
    assert (
        p["mode"] == "if_better"
        and p["compared_with"] == 2
        and "on the same eval data (4 rows)" in p["reason"]
    )
    assert hub.task("client-sent").active_version == (3 if p["promoted"] else 2)


def test_train_multi_and_idempotent_retry(hub):
    tasks = [
        {"task": "multi-a", "task_type": "classification", "train": RECORDS},
        {"task": "multi-b", "task_type": "classification", "train": RECORDS, "labels": ["neg", "pos"]},
    ]
    job = hub.train_multi(tasks, hyperparameters=HP, idempotency_key="multi-1")
    again = hub.train_multi(tasks, hyperparameters=HP, idempotency_key="multi-1")
    assert again.id == job.id  # a retry with the key: the first job, not a second one
    with pytest.raises(ph.Conflict) as e:
        hub.train_multi(tasks[:1] + tasks[:1], hyperparameters=HP, idempotency_key="multi-1")
    assert e.value.code == "idempotency_key_reused" and e.value.status == 409
    info = job.wait(timeout=120, poll_s=0.2, progress=False)
    assert info.result == {"multi-a": 1, "multi-b": 1} and info.kind == "multitask"


def test_a_cancelled_job_raises_on_wait(hub):
    job = hub.train(
        "client-long",
        "classification",
        train=RECORDS * 50,
        hyperparameters={**HP, "epochs": 100, "batch_size": 1, "holdout_fraction": 0.0},
    )
    job.cancel()
    with pytest.raises(ph.JobFailed) as e:
        job.wait(timeout=60, poll_s=0.2, progress=False)
    assert e.value.job.state == "cancelled" and e.value.code == "job_cancelled"


def test_lists_follow_every_page(hub):
    names = [t.name for t in hub.tasks(page_size=1)]
    assert names == sorted(names) and {"seeded-cls", "seeded-tok", "seeded-qa"} <= set(names)
    assert [t.name for t in hub.tasks(name_prefix="seeded-", page_size=2)] == [
        "seeded-cls",
        "seeded-qa",
        "seeded-tok",
    ]
    assert [t.name for t in hub.tasks(task_type="question-answering")] == ["seeded-qa"]
    jobs = list(hub.jobs(page_size=1))
    assert len(jobs) == len({j.id for j in jobs}) >= 1
    assert all(isinstance(j, ph.JobInfo) for j in jobs)
    ds = hub.upload_dataset(
        b'{"text": "x", "label": "a"}\n', filename="tiny.jsonl", task_type="classification"
    )
    assert isinstance(ds, ph.Dataset) and ds.rows == 1
    assert ds.id in [d.id for d in hub.datasets(task_type="classification", page_size=1)]
    hub.delete_dataset(ds.id)
    assert ds.id not in [d.id for d in hub.datasets()]


def test_delete_task(hub):
    hub.train("client-del", "classification", train=RECORDS, hyperparameters=HP).wait(
        timeout=120, poll_s=0.2, progress=False
    )
    assert hub.delete_task("client-del") == 1
    with pytest.raises(ph.NotFound):
        hub.task("client-del")


def test_embed_when_the_server_has_it(hub, server):
    paths = httpx.get(server[0] + "/openapi.json", headers={"Authorization": f"Bearer {server[1]}"}).json()[
        "paths"
    ]
    if "/embed" not in paths:
        pytest.skip("this server has no POST /embed")
    vectors = hub.embed(["a cat", "a dog"])
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-3


def remote(server, *args: str, key: bool = True) -> subprocess.CompletedProcess:
    base, token, settings = server
    env = process_env(settings)
    env.pop("PROMPTHUB_KEY", None)
    if key:
        env["PROMPTHUB_KEY"] = token
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "remote", *args[:1], "--url", base, *args[1:]],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_remote_cli(server, tmp_path):
    r = remote(server, "tasks", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"seeded-cls", "seeded-qa"} <= {t["name"] for t in rows}
    r = remote(server, "tasks", "--name-prefix", "seeded-")
    assert r.returncode == 0 and r.stdout.splitlines()[0].split() == ["name", "type", "active", "labels"]
    r = remote(server, "predict", "seeded-cls", "--text", "a fine day", "--text", "a bad day")
    assert r.returncode == 0, r.stderr
    assert len([json.loads(line) for line in r.stdout.splitlines()]) == 2
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    r = remote(
        server, "train", "--task", "cli-sent", "--task-type", "classification", "--train", str(data),
        "--hp", "epochs=1", "--hp", "prefix_length=4", "--wait",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    assert done["state"] == "succeeded" and done["result"] == {"cli-sent": 1}
    assert "job " in r.stderr  # progress on stderr, the result alone on stdout
    r = remote(server, "jobs", "--task", "cli-sent", "--json")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["id"] == done["id"]
    r = remote(server, "activate", "cli-sent", "1")
    assert r.returncode == 0 and json.loads(r.stdout) == {"task": "cli-sent", "active_version": 1}
    # errors: the server's status and detail on stderr, exit 1; no key: 401; bad usage: 2
    r = remote(server, "activate", "cli-sent", "7")
    assert r.returncode == 1 and "404" in r.stderr and "version 7" in r.stderr
    r = remote(server, "tasks", key=False)
    assert r.returncode == 1 and "401" in r.stderr
    r = remote(
        server,
        "train",
        "--task",
        "x",
        "--task-type",
        "classification",
        "--train",
        str(tmp_path / "nope.jsonl"),
    )
    assert r.returncode == 2 and "no such data file" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "remote", "tasks", "--url", "http://127.0.0.1:9"],
        cwd=str(REPO_ROOT), env=process_env(server[2]), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 3 and "error" in r.stderr


def test_remote_cli_is_also_a_script_of_the_client_package(server):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(CLIENT_DIR), PROMPTHUB_KEY=server[1])
    r = subprocess.run(
        [sys.executable, "-m", "prompthub_client.cli", "tasks", "--url", server[0], "--json"],
        cwd="/", env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "seeded-cls" in r.stdout
