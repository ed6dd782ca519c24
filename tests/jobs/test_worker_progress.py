"""A running job reports each finished epoch's loss and eval metrics in its progress (`history`),
written at once, and the final progress keeps the last step, loss and history (the console draws
the eval metric per epoch from it while the job runs and after)."""

from __future__ import annotations

from types import SimpleNamespace

from app.engine.train_config import Progress
from app.jobs.progress import JobRun


def test_epoch_history_is_reported_and_kept(monkeypatch):
    written: list[dict | None] = []
    monkeypatch.setattr(JobRun, "_write", lambda self, doc: written.append(doc))
    run = JobRun(SimpleNamespace(settings=SimpleNamespace(job_heartbeat_s=60, job_max_seconds=3600)), "job-1")  # type: ignore[arg-type]
    run.progress(Progress(step=1, total=4, epoch=0.5, loss=0.9))
    run.progress(Progress(step=2, total=4, epoch=1.0, loss=0.8))  # throttled: within 0.5 s
    run.progress(
        Progress(
            step=2, total=4, epoch=1.0, loss=0.8, metrics={"t": {"accuracy": 0.5}}, message="epoch 1 done"
        )
    )
    assert written[-1]["history"] == [{"epoch": 1, "loss": 0.8, "metrics": {"t": {"accuracy": 0.5}}}]
    run.progress(Progress(step=4, total=4, epoch=2.0, loss=0.4))
    run.progress(
        Progress(
            step=4, total=4, epoch=2.0, loss=0.4, metrics={"t": {"accuracy": 1.0}}, message="epoch 2 done"
        )
    )
    run.flush("done")
    final = written[-1]
    assert final["message"] == "done" and final["step"] == final["total"] == 4 and final["loss"] == 0.4
    assert [h["metrics"]["t"]["accuracy"] for h in final["history"]] == [0.5, 1.0]
