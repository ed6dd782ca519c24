"""Evaluation during and after training: a served task's metrics on labelled examples, every
epoch's evaluation of the task models being trained, and the selection of the best epoch with
early stopping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.engine import tasks as registry
from app.engine.backbone import Backbone
from app.engine.model import ServingTask, TaskModel, TaskSpec
from app.engine.predict import encode_examples, run_features


def primary_metric(spec: TaskSpec) -> str:
    return registry.get(spec.task_type).primary_metric(spec)


def evaluate(backbone: Backbone, task: ServingTask, examples: Sequence, batch_size: int = 64) -> dict:
    """Metrics of a served task on labelled examples."""
    spec = task.spec
    features = encode_examples(spec, backbone.tokenizer, examples, with_labels=False)
    logits = run_features(backbone, task, features, batch_size)
    return registry.get(spec.task_type).evaluate(spec, list(examples), features, logits)


def evaluate_epoch(
    backbone: Backbone, models: dict[str, tuple[TaskModel, Sequence | None]], epoch: int, batch_size: int
) -> tuple[dict[str, dict], list[float], dict[str, tuple[ServingTask, dict]]]:
    """(metrics of the tasks with eval data, one score a task, the served snapshot and metrics of
    each) after `epoch`. A task without eval data scores the epoch number: its last epoch wins."""
    metrics: dict[str, dict] = {}
    scores: list[float] = []
    snapshot: dict[str, tuple[ServingTask, dict]] = {}
    for name, (model, eval_examples) in models.items():
        serving = model.to_serving()
        if eval_examples:
            m = evaluate(backbone, serving, eval_examples, batch_size)
            metrics[name] = m
            scores.append(m[primary_metric(model.spec)])
        else:
            m = {}
            scores.append(float(epoch))
        snapshot[name] = (serving, m)
    return metrics, scores, snapshot


@dataclass
class EpochSelection:
    """The best epoch so far and early stopping. One selection for all the tasks of a run: with a
    shared prefix they must come from the same epoch (the mean of their scores decides)."""

    #: stop after this many epochs in a row without a better mean score (0: never)
    patience: int
    best_score: float = -math.inf
    bad_epochs: int = 0
    #: task -> (score, served snapshot, metrics, epoch) of the best epoch
    best: dict[str, tuple[float, ServingTask, dict, int]] = field(default_factory=dict)

    def stop_after(
        self, epoch: int, mean: float, scores: list[float], snapshot: dict[str, tuple[ServingTask, dict]]
    ) -> bool:
        """Record an evaluated epoch (its mean score, and each task's score and snapshot in the
        snapshot's order); True when the run stops early."""
        if mean > self.best_score:
            self.best_score, self.bad_epochs = mean, 0
            self.best = {
                name: (scores[i], served, m, epoch) for i, (name, (served, m)) in enumerate(snapshot.items())
            }
            return False
        self.bad_epochs += 1
        return bool(self.patience and self.bad_epochs >= self.patience)
