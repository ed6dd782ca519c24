"""What a training run is given and gives back: its configuration, the progress it reports, its
result, and the data it starts from (labels inferred, a seeded held-out split when no eval data
is given). The loop itself is app.engine.train."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from app.engine import tasks as registry
from app.engine.model import ServingTask, TaskSpec
from app.engine.options import default


class Cancelled(Exception):
    """Training stopped because should_stop() returned True."""


@dataclass
class TrainConfig:
    """How a run trains. The options a user sets start from app.engine.options' table; build
    TrainConfigs from user input with options.build_training."""

    epochs: int = default("epochs")
    lr: float = default("lr")
    batch_size: int = default("batch_size")
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = default("seed")
    early_stopping_patience: int = default("early_stopping_patience")
    anneal_epochs: int = default("anneal_epochs")
    max_steps: int | None = default("max_steps")
    eval_batch_size: int = default("eval_batch_size")
    #: learning rate of the encoder in full fine-tuning
    backbone_lr: float = default("backbone_lr")
    #: with no eval data, hold out this fraction of the training data (seeded) for evaluation; a
    #: library call holds out nothing unless asked (the training surfaces default to the table's)
    holdout_fraction: float = 0.0
    #: after a held-out split chose the epochs, train again on all of train (app.engine.train)
    refit: bool = default("refit")
    #: the backbone precision to train for (None: fp32; a worker fills in its serving precision)
    precision: str | None = default("precision")
    #: int8: the served graph keeps each feed-forward output projection in fp32 (the server's
    #: PROMPTHUB_INT8_KEEP_FFN_OUT_FP32, which a worker copies here)
    int8_keep_ffn_out_fp32: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Progress:
    step: int
    total: int
    epoch: float
    loss: float | None
    metrics: dict | None = None
    message: str = ""
    task: str | None = None
    #: a later stage of the same run ("refit": the second run on all of train; its epochs go on
    #: from the first run's)
    stage: str | None = None


@dataclass
class TrainResult:
    task: ServingTask
    metrics: dict
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    num_trainable: int = 0
    trainable_fraction: float = 0.0
    seconds: float = 0.0
    steps: int = 0
    #: a refit run's {"epochs", "examples", "held_out"}: the model was trained again on all the
    #: training examples for the epochs the held-out split chose; `metrics` are that split's
    refit: dict | None = None


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]
#: called after every evaluated epoch with (epoch, mean primary score); may raise to stop the run
EpochFn = Callable[[int, float], None]


def emit(progress: ProgressFn | None, **kw) -> None:
    """Report a Progress(**kw) to the callback, when there is one."""
    if progress is not None:
        progress(Progress(**kw))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


MIN_HOLDOUT_EXAMPLES = 20
#: a held-out split carved from train is at most this large (enough to rank epochs; the rest trains)
MAX_HOLDOUT_EXAMPLES = 1000
#: a run refits (config.refit) only when its held-out split is at least this share of the training
#: data: below it (large data sets, where the split is capped) a second run gains little
REFIT_MIN_SHARE = 0.05


def split_holdout(
    train: Sequence, evals: Sequence | None, fraction: float, seed: int
) -> tuple[list, list | None]:
    """(train, eval): a seeded held-out slice of train when no eval data is given."""
    train = list(train)
    if evals or fraction <= 0 or len(train) < MIN_HOLDOUT_EXAMPLES:
        return train, list(evals) if evals else None
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n = min(MAX_HOLDOUT_EXAMPLES, max(1, int(len(train) * fraction)))
    held = set(order[:n])
    return [e for i, e in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def infer_labels(spec: TaskSpec, examples: Sequence) -> TaskSpec:
    if not spec.labels:
        spec.labels = registry.get(spec.task_type).infer_labels(examples)
    return spec
