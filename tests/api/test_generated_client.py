"""A client generated from the served /openapi.json by openapi-python-client trains and predicts
against a real server (a `prompthub serve` process with its embedded worker, on the tiny backbone)
without a hand edit: the typed POST /train body, the per-type prediction models and the error
models are enough."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import free_port, start_server, stop_server, wait_ready

pytestmark = pytest.mark.slow  # ~30-60 s: a server process, a worker process and a training job

RECORDS = [{"text": t, "label": lab} for t, lab in [("good", "pos"), ("bad", "neg")] * 4]


def _generate(spec: bytes, out: object) -> None:
    from pathlib import Path

    out = Path(str(out))
    (out / "openapi.json").write_bytes(spec)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [str(bindir / "openapi-python-client"), "generate", "--path", "openapi.json", "--meta", "none"]
        + ["--output-path", "prompthub_generated"],
        cwd=out,
        env=env,
        check=True,
        capture_output=True,
        timeout=240,
    )


def test_generated_client_trains_and_predicts(tmp_path, tiny_backbone_dir):
    from app.config import Settings
    from app.db import keys
    from app.db.session import get_sessionmaker, run_migrations

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'hub.db'}",
        store_dir=str(tmp_path / "store"),
        data_dir=str(tmp_path / "data"),
        backbone=str(tiny_backbone_dir),
        port=free_port(),
        auth="required",
        embedded_worker=True,
        worker_poll_s=0.1,
        log_format="json",
    )
    run_migrations(settings.database_url)
    with get_sessionmaker(settings.database_url)() as s:
        token = keys.create_key(s, name="gen", scopes=["admin"])[1]
    base = f"http://127.0.0.1:{settings.port}"
    log = tmp_path / "server.log"
    proc = start_server(settings, log, worker=True)
    try:
        wait_ready(base, proc, log, timeout=420)  # a busy machine loads even the tiny backbone slowly
        _generate(httpx.get(base + "/openapi.json").content, tmp_path)
        sys.path.insert(0, str(tmp_path))
        try:
            gen = importlib.import_module("prompthub_generated")
            models = importlib.import_module("prompthub_generated.models")
            train_api = importlib.import_module("prompthub_generated.api.train.train_train_post")
            jobs_api = importlib.import_module("prompthub_generated.api.jobs.get_job_jobs_job_id_get")
            predict_api = importlib.import_module("prompthub_generated.api.predict.predict_predict_task_post")
        finally:
            sys.path.remove(str(tmp_path))
        client = gen.AuthenticatedClient(base_url=base, token=token, timeout=httpx.Timeout(60))

        body = models.TrainRequest(
            task="gen-sentiment",
            task_type=models.TrainRequestTaskType.CLASSIFICATION,
            train=models.RecordsSource(
                records=[models.RecordsSourceRecordsItem.from_dict(r) for r in RECORDS]
            ),
            hyperparameters=models.Hyperparameters(epochs=1, batch_size=4, max_length=16, prefix_length=4),
        )
        accepted = train_api.sync(client=client, body=body)
        assert isinstance(accepted, models.JobAccepted), accepted
        deadline = time.monotonic() + 180
        while True:
            job = jobs_api.sync(accepted.job_id, client=client)
            assert isinstance(job, models.JobOut), job
            if job.state in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert job.state == "succeeded", (job.state, job.error)

        out = predict_api.sync(
            "gen-sentiment", client=client, body=models.PredictRequest(inputs=["good", "bad"])
        )
        assert isinstance(out, models.PredictResponse), out
        assert out.task == "gen-sentiment" and out.version == 1 and len(out.predictions) == 2
        first = out.predictions[0]
        assert isinstance(first, models.ClassificationPrediction)
        assert first.label in {"pos", "neg"} and 0 < first.score <= 1
        assert set(first.scores.to_dict()) == {"pos", "neg"}

        # the Hugging Face shape, and a typed error with its code
        hf = predict_api.sync("gen-sentiment", client=client, body=models.PredictRequest(inputs="good"))
        assert isinstance(hf, list) and isinstance(hf[0], models.HFLabelScore)
        missing = predict_api.sync("nope", client=client, body=models.PredictRequest(inputs=["x"]))
        assert isinstance(missing, models.ErrorResponse) and missing.code == "task_not_found"
        bad = train_api.sync(
            client=client,
            body=models.TrainRequest(
                task="x",
                task_type=models.TrainRequestTaskType.CLASSIFICATION,
                train=models.RecordsSource(
                    records=[models.RecordsSourceRecordsItem.from_dict({"text": "a"})]
                ),
            ),
        )
        assert isinstance(bad, models.ValidationErrorResponse) and bad.code == "invalid_input"
        assert bad.detail[0].loc[:3] == ["body", "train", "records"]
    finally:
        stop_server(proc)
    # PROMPTHUB_LOG_FORMAT=json: the server's log is JSON lines, one access line per request
    import json

    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "prompthub.access"]
    ok = [x for x in access if x["path"] == "/predict/gen-sentiment" and x["rows"] == 2]
    assert ok and ok[0]["status"] == 200 and ok[0]["task"] == "gen-sentiment" and ok[0]["latency_ms"] > 0
    assert ok[0]["request_id"] and ok[0]["key_id"]
    assert any(x["path"] == "/predict/nope" and x["status"] == 404 for x in access)
