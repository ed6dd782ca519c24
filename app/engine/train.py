"""Training: P-Tuning v2, shallow prompt tuning and full fine-tuning through one loop.

AdamW with linear warm-up and decay, gradient clipping, evaluation every epoch with
best-checkpoint selection and early stopping, seeded, progress through a callback, cancellation
between steps. `train_multitask` trains one shared prefix jointly over several tasks (each with
its own head), then optionally continues per task from the shared prefix (the paper's MPT-2).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from app.engine import data as D
from app.engine import tasks as registry
from app.engine.backbone import Backbone
from app.engine.batch import collate
from app.engine.checkpoint import checkpoint_bytes, load_checkpoint_bytes
from app.engine.model import ServingTask, TaskModel, TaskSpec, new_prefix_encoder
from app.engine.options import default
from app.engine.predict import encode_examples, run_features
from app.engine.prefix import PrefixEncoder
from app.engine.resume import RunCheckpointer, bytes_tensor, tensor_bytes


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
    max_steps: int | None = default("max_steps")
    eval_batch_size: int = default("eval_batch_size")
    #: learning rate of the encoder in full fine-tuning
    backbone_lr: float = default("backbone_lr")
    #: with no eval data, hold out this fraction of the training data (seeded) for evaluation; a
    #: library call holds out nothing unless asked (the training surfaces default to the table's)
    holdout_fraction: float = 0.0

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


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]
#: called after every evaluated epoch with (epoch, mean primary score); may raise to stop the run
EpochFn = Callable[[int, float], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def primary_metric(spec: TaskSpec) -> str:
    return registry.get(spec.task_type).primary_metric(spec)


MIN_HOLDOUT_EXAMPLES = 20
#: a held-out split carved from train is at most this large (enough to rank epochs; the rest trains)
MAX_HOLDOUT_EXAMPLES = 1000


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


# ------------------------------------------------------------------------------------ loss, evaluation


def task_loss(spec: TaskSpec, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    return registry.get(spec.task_type).loss(spec, logits, batch)


def evaluate(backbone: Backbone, task: ServingTask, examples: Sequence, batch_size: int = 64) -> dict:
    """Metrics of a served task on labelled examples."""
    spec = task.spec
    features = encode_examples(spec, backbone.tokenizer, examples, with_labels=False)
    logits = run_features(backbone, task, features, batch_size)
    return registry.get(spec.task_type).evaluate(spec, list(examples), features, logits)


def training_batch(
    spec: TaskSpec, features: Sequence[dict], pad_id: int, device: str | torch.device
) -> dict[str, Tensor]:
    """Padded inputs and the task type's targets."""
    batch = collate(features, pad_id)
    batch.update(registry.get(spec.task_type).targets(features, batch["input_ids"].shape[1]))
    return {k: v.to(device) for k, v in batch.items()}


# ------------------------------------------------------------------------------------ optimisation


def _param_groups(model: TaskModel, config: TrainConfig) -> list[dict]:
    groups: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        lr = config.backbone_lr if name.startswith("finetuned.") else config.lr
        no_decay = p.dim() < 2 or "LayerNorm" in name or name.startswith(("prefix.", "prompt."))
        key = (lr, 0.0 if no_decay else config.weight_decay)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def _scheduler(
    opt: torch.optim.Optimizer, total: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=gen).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _emit(progress: ProgressFn | None, **kw) -> None:
    if progress is not None:
        progress(Progress(**kw))


# ------------------------------------------------------------------------------------ single task


def train_task(
    backbone: Backbone,
    spec: TaskSpec,
    train_examples: Sequence,
    eval_examples: Sequence | None = None,
    config: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    init_kv: ServingTask | None = None,
    shared_prefix: PrefixEncoder | None = None,
    task_name: str | None = None,
    checkpointer: RunCheckpointer | None = None,
    epoch_end: EpochFn | None = None,
    prepare: Callable[[TaskModel], None] | None = None,
) -> TrainResult:
    """Train one task. `checkpointer`: save the run's state now and then and resume from a saved
    one (app.engine.resume); `epoch_end(epoch, score)` after every evaluated epoch (a search's
    pruner: it may raise to stop the run); `prepare(model)` changes the new task model in place
    before training (e.g. the quality bench's LoRA adapters on a fine-tuning copy of the encoder):
    whatever then requires grad is trained."""
    config = config or TrainConfig()
    if not train_examples:
        raise D.DataError("training data is empty", field="train")
    infer_labels(spec, train_examples)
    train_examples, eval_examples = split_holdout(
        train_examples, eval_examples, config.holdout_fraction, config.seed
    )
    if init_kv is not None:
        spec.reparameterize = False  # the flat K/V of the init prefix are the parameters
        spec.layers = list(init_kv.spec.layers)
        spec.prefix_length = init_kv.prefix_length
    spec.validate(backbone.num_layers)
    seed_everything(config.seed)
    model = TaskModel(spec, backbone, shared_prefix=shared_prefix).to(backbone.device)
    if init_kv is not None and model.prefix is not None:
        layers = torch.tensor(spec.layers)
        model.prefix.load_flat(init_kv.kv[layers].to(model.prefix.weight.device))
    if init_kv is not None and _same_head(init_kv, spec):
        # the same task (a multi-task run's per-task stage, or a new version of a task): its
        # trained head is the start too, not only its prefix
        model.head.load_state_dict(init_kv.head.state_dict())
    if prepare is not None:
        prepare(model)
    features = encode_examples(spec, backbone.tokenizer, train_examples, with_labels=True)
    return _fit(
        backbone,
        {task_name or "task": (model, features, eval_examples)},
        config,
        progress,
        should_stop,
        checkpointer=checkpointer,
        epoch_end=epoch_end,
    )[task_name or "task"]


def _same_head(task: ServingTask, spec: TaskSpec) -> bool:
    """Whether a trained task's head can start a new training of `spec`: same task type, head
    kind, labels in the same order and label words (on one backbone these fix the head's shapes)."""

    def shape(s: TaskSpec) -> tuple:
        return (s.task_type, s.head, list(s.labels), s.label_words or None)

    return shape(task.spec) == shape(spec)


def _fit(
    backbone: Backbone,
    tasks: dict[str, tuple[TaskModel, list[dict], Sequence | None]],
    config: TrainConfig,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    checkpointer: RunCheckpointer | None = None,
    epoch_end: EpochFn | None = None,
) -> dict[str, TrainResult]:
    """The training loop over one or more task models (several share a prefix encoder)."""
    start_time = time.monotonic()
    gen = torch.Generator().manual_seed(config.seed)
    pad = backbone.tokenizer.pad_token_id or 0
    device = backbone.device
    names = list(tasks)
    params = {}
    for model, _, _ in tasks.values():
        for p in model.trainable_parameters():
            params[id(p)] = p
    joint = _JointModule([m for m, _, _ in tasks.values()])
    opt = torch.optim.AdamW(_param_groups(joint, config), lr=config.lr)
    steps_per_epoch = sum(math.ceil(len(f) / config.batch_size) for _, f, _ in tasks.values())
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    sched = _scheduler(opt, total, config.warmup_ratio)
    history: list[dict] = []
    best: dict[str, tuple[float, ServingTask, dict, int]] = {}
    bad_epochs = 0
    best_score = -math.inf
    step = 0
    epoch = 0
    running, count = 0.0, 0
    trainable = [(n, p) for n, p in joint.named_parameters() if p.requires_grad]
    fingerprint = {
        "config": config.to_dict(),
        "total": total,
        "tasks": {n: [len(f), len(e or ())] for n, (_, f, e) in tasks.items()},
        "params": [[n, list(p.shape)] for n, p in trainable],
    }
    gen_epoch_state = gen.get_state()

    def run_state() -> dict:
        """Everything the rest of the run depends on, between two steps (app.engine.resume)."""
        return {
            "fingerprint": fingerprint,
            "step": step,
            "epoch": epoch,
            "count": count,
            "running": running,
            "params": {n: p.detach().clone() for n, p in trainable},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "gen_epoch": gen_epoch_state,
            "torch_rng": torch.get_rng_state(),
            "py_rng": random.getstate(),
            "history": history,
            "bad_epochs": bad_epochs,
            "best_score": best_score,
            "best": {
                n: [sc, bytes_tensor(checkpoint_bytes(srv, backbone)), m, ep]
                for n, (sc, srv, m, ep) in best.items()
            },
        }

    skip, resuming = 0, False
    saved = checkpointer.load(fingerprint) if checkpointer is not None else None
    if saved is not None:
        with torch.no_grad():
            for n, p in trainable:
                p.copy_(saved["params"][n])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        step, epoch, skip = saved["step"], saved["epoch"] - 1, saved["count"]
        history, bad_epochs, best_score = saved["history"], saved["bad_epochs"], saved["best_score"]
        best = {
            n: (sc, load_checkpoint_bytes(tensor_bytes(blob), backbone), m, ep)
            for n, (sc, blob, m, ep) in saved["best"].items()
        }
        gen.set_state(saved["gen_epoch"])
        resume_rng = (saved["torch_rng"], saved["py_rng"], saved["running"])
        resuming = True
        _emit(
            progress,
            step=step,
            total=total,
            epoch=float(epoch),
            loss=None,
            message=f"resumed from step {step}",
        )
    while step < total:
        epoch += 1
        gen_epoch_state = gen.get_state()
        plan = [(name, b) for name in names for b in _batches(len(tasks[name][1]), config.batch_size, gen)]
        order = torch.randperm(len(plan), generator=gen).tolist()
        joint.train()
        running, count = 0.0, 0
        if resuming:  # resuming inside this epoch: its first `skip` steps are done
            resuming = False
            torch.set_rng_state(resume_rng[0])
            random.setstate(resume_rng[1])
            running, count = resume_rng[2], skip
        try:  # whatever stops the epoch (a cancel, an error), the modules go back to eval
            for k in order[skip:]:
                if step >= total:
                    break
                if should_stop is not None and should_stop():
                    if checkpointer is not None:  # stopped from outside: the next run goes on from here
                        checkpointer.save(run_state())
                    raise Cancelled(f"cancelled at step {step} of {total}")
                name, idx = plan[k]
                model, feats, _ = tasks[name]
                batch = training_batch(model.spec, [feats[i] for i in idx], pad, device)
                loss = task_loss(model.spec, model(batch), batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
                opt.step()
                sched.step()
                step += 1
                running += loss.item()
                count += 1
                _emit(
                    progress,
                    step=step,
                    total=total,
                    epoch=epoch - 1 + count / max(1, len(plan)),
                    loss=running / count,
                    task=name if len(names) > 1 else None,
                )
                if checkpointer is not None and checkpointer.due(step):
                    checkpointer.save(run_state())
        finally:
            joint.eval()
        skip = 0
        record = {"epoch": epoch, "step": step, "loss": running / max(1, count), "metrics": {}}
        scores = []
        snapshot: dict[str, tuple[ServingTask, dict]] = {}
        for name in names:
            model, _, eval_examples = tasks[name]
            serving = model.to_serving()
            if eval_examples:
                m = evaluate(backbone, serving, eval_examples, config.eval_batch_size)
                record["metrics"][name] = m
                scores.append(m[primary_metric(model.spec)])
            else:
                m = {}
                scores.append(float(epoch))  # no eval data: the last epoch wins
            snapshot[name] = (serving, m)
        history.append(record)
        # one selection for all tasks: with a shared prefix they must come from the same epoch
        mean = sum(scores) / len(scores)
        _emit(
            progress,
            step=step,
            total=total,
            epoch=float(epoch),
            loss=record["loss"],
            metrics=record["metrics"],
            message=f"epoch {epoch} done",
        )
        if epoch_end is not None:
            epoch_end(epoch, mean)
        if mean > best_score:
            best_score, bad_epochs = mean, 0
            best = {
                name: (scores[i], snapshot[name][0], snapshot[name][1], epoch) for i, name in enumerate(names)
            }
        else:
            bad_epochs += 1
            if config.early_stopping_patience and bad_epochs >= config.early_stopping_patience:
                _emit(
                    progress,
                    step=step,
                    total=total,
                    epoch=float(epoch),
                    loss=record["loss"],
                    message="early stopping",
                )
                break
    seconds = time.monotonic() - start_time
    backbone_params = backbone.num_parameters()
    out = {}
    for name in names:
        model = tasks[name][0]
        score, serving, m, ep = best[name]
        n_train = model.num_trainable()
        out[name] = TrainResult(
            task=serving,
            metrics=m,
            history=history,
            best_epoch=ep,
            num_trainable=n_train,
            trainable_fraction=n_train / backbone_params,
            seconds=seconds,
            steps=step,
        )
    return out


class _JointModule(torch.nn.Module):
    def __init__(self, models: list[TaskModel]):
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def train(self, mode: bool = True) -> _JointModule:
        for m in self.models:
            m.train(mode)
        self.training = mode
        return self


# ------------------------------------------------------------------------------------ multi-task


def train_multitask(
    backbone: Backbone,
    tasks: dict[str, tuple[TaskSpec, Sequence, Sequence | None]],
    config: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    per_task_epochs: int = 0,
) -> dict[str, TrainResult]:
    """One prefix shared by all tasks (each its own head), trained jointly on batches drawn from
    every task; then, with per_task_epochs > 0, each task continues alone from the shared prefix."""
    config = config or TrainConfig()
    if len(tasks) < 2:
        raise ValueError("multi-task training needs at least two tasks")
    for name, (spec, train, _) in tasks.items():
        if spec.method != "p-tuning-v2":
            raise ValueError(f"task {name!r}: multi-task training shares a P-Tuning v2 prefix")
        infer_labels(spec, train)
    first = next(iter(tasks.values()))[0]
    first.validate(backbone.num_layers)
    for spec, _, _ in tasks.values():
        spec.prefix_length, spec.layers, spec.reparameterize = (
            first.prefix_length,
            list(first.layers),
            first.reparameterize,
        )
        spec.validate(backbone.num_layers)
    seed_everything(config.seed)
    shared = new_prefix_encoder(first, backbone).to(backbone.device)
    models: dict[str, tuple[TaskModel, list[dict], Sequence | None]] = {}
    tasks = {
        name: (spec, *split_holdout(train, ev, config.holdout_fraction, config.seed))
        for name, (spec, train, ev) in tasks.items()
    }
    for name, (spec, train, ev) in tasks.items():
        model = TaskModel(spec, backbone, shared_prefix=shared).to(backbone.device)
        feats = encode_examples(spec, backbone.tokenizer, list(train), with_labels=True)
        models[name] = (model, feats, ev)
    results = _fit(backbone, models, config, progress, should_stop)
    if per_task_epochs <= 0:
        return results
    out = {}
    for name, (spec, train, ev) in tasks.items():
        cont = TrainConfig(**{**config.to_dict(), "epochs": per_task_epochs, "max_steps": None})
        spec_cont = TaskSpec.from_dict(spec.to_dict())
        spec_cont.prefix_dropout = spec.prefix_dropout
        result = train_task(
            backbone,
            spec_cont,
            train,
            ev,
            cont,
            progress,
            should_stop,
            init_kv=results[name].task,
            task_name=name,
        )
        result.history = results[name].history + result.history
        out[name] = result
    return out
