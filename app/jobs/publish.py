"""What a finished training run becomes: whether its new version replaces the active one
(POST /train's `activate`: always, never, or if_better on the same eval data), and its checkpoint
published to the store and the database."""

from __future__ import annotations

import logging
from typing import Any

from app import versions
from app.db import tasks as db_tasks
from app.engine.backbone import Backbone
from app.engine.checkpoint import checkpoint_bytes, load_checkpoint_bytes
from app.engine.evaluation import evaluate, primary_metric
from app.engine.train_config import MIN_HOLDOUT_EXAMPLES, TrainConfig, TrainResult
from app.jobs.payload import training_doc
from app.jobs.progress import jsonable

log = logging.getLogger(__name__)


def decide_promotion(
    sessionmaker: Any,
    store: Any,
    name: str,
    mode: str,
    result: TrainResult,
    ev: Any,
    backbone: Backbone,
    config: TrainConfig,
) -> tuple[bool, dict[str, Any]]:
    """Whether the new version of `name` becomes the active one, and why (POST /train's
    `activate`). if_better evaluates the active version and the new one on the same eval
    examples (the job's eval split, or the held-out part of its training data) with the task
    type's primary metric; the new one must be strictly better (a tie keeps the active one). A task without an active version takes its
    first version whatever the mode."""
    with sessionmaker() as s:
        active = db_tasks.get_active_version(s, name)
        current = (active.version, active.sha256) if active is not None else None
    doc: dict[str, Any] = {"mode": mode}
    if current is None:
        return True, {**doc, "promoted": True, "reason": "the task had no active version"}
    number, sha = current
    doc["compared_with"] = number
    if mode == "always":
        return True, {**doc, "promoted": True, "reason": f"activate=always: replaces v{number}"}
    if mode == "never":
        return False, {**doc, "promoted": False, "reason": f"activate=never: v{number} stays active"}
    if not ev:
        return False, {
            **doc,
            "promoted": False,
            "reason": f"no eval data to compare with v{number} on (give `eval`, or "
            f"holdout_fraction with {MIN_HOLDOUT_EXAMPLES}+ training rows): v{number} stays active",
        }
    metric = primary_metric(result.task.spec)
    new = evaluate(backbone, result.task, ev, config.eval_batch_size).get(metric)
    try:
        old_task = load_checkpoint_bytes(
            store.read_version(name, number, sha), backbone, where=f"task {name!r} v{number}"
        )
        old = evaluate(backbone, old_task, ev, config.eval_batch_size).get(metric)
    except Exception as e:  # another label set, another backbone, a missing file...
        log.warning("task %s: v%d could not be evaluated for if_better: %s", name, number, e)
        return False, {
            **doc,
            "promoted": False,
            "reason": f"the active v{number} could not be evaluated on this eval data ({e}); it stays "
            "active: activate the new version by hand if it should be served",
        }
    doc.update(metric=metric, new=new, active=old, eval_rows=len(ev))
    where = f"on the same eval data ({len(ev)} rows)"
    if new is None or old is None or not float(new) > float(old):
        sign = "=" if new is not None and old is not None and float(new) == float(old) else "<"
        reason = f"{metric} {_fmt(new)} {sign} active v{number}'s {_fmt(old)} {where}: v{number} stays active"
        return False, {**doc, "promoted": False, "reason": reason}
    reason = f"{metric} {_fmt(new)} > active v{number}'s {_fmt(old)} {where}"
    return True, {**doc, "promoted": True, "reason": reason}


def promote_and_publish(
    sessionmaker: Any,
    store: Any,
    job_id: str,
    name: str,
    mode: str,
    result: TrainResult,
    ev: Any,
    backbone: Backbone,
    hp: dict[str, Any],
    config: TrainConfig,
    data: dict[str, Any],
    **extra: Any,
) -> tuple[int, dict[str, Any]]:
    """Decide whether the trained task's new version becomes the active one (`mode`: POST /train's
    `activate`, see decide_promotion), then publish it: store, then database, then activation when
    promoted. Returns the version and the promotion record (with the version)."""
    promote, why = decide_promotion(sessionmaker, store, name, mode, result, ev, backbone, config)
    training = jsonable(
        training_doc(
            hp,
            config,
            job_id=job_id,
            history=result.history,
            best_epoch=result.best_epoch,
            steps=getattr(result, "steps", None),
            seconds=getattr(result, "seconds", None),
            num_trainable=result.num_trainable,
            trainable_fraction=result.trainable_fraction,
            promotion=why,
            **({"refit": result.refit} if getattr(result, "refit", None) else {}),
            **extra,
        )
    )
    metrics = jsonable(result.metrics)
    meta = {"training": training, "metrics": metrics, "source": f"job:{job_id}", "data": data}
    if config.precision == "int8":  # trained against the int8 backbone (app.engine.int8_sim)
        meta["precision"] = "int8"
    blob = checkpoint_bytes(result.task, backbone, meta=meta)
    with sessionmaker() as s:
        version = versions.publish(
            s, store, name, blob, source=f"job:{job_id}", job_id=job_id, activate=promote
        ).version
    return version, {**why, "version": version}


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"
