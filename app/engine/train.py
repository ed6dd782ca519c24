"""Training: P-Tuning v2, shallow prompt tuning and full fine-tuning through one loop.

AdamW with linear warm-up and decay, gradient clipping, evaluation every epoch with
best-checkpoint selection and early stopping, seeded, progress through a callback, cancellation
between steps. Multi-task training (one shared prefix, app.engine.multitask) runs through the
same loop, `_fit`. A run's configuration, progress and result are app.engine.train_config; evaluation, best-epoch
selection and early stopping app.engine.evaluation.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from app.engine import data as D
from app.engine import tasks as registry
from app.engine.backbone import Backbone
from app.engine.batch import collate
from app.engine.checkpoint import checkpoint_bytes, load_checkpoint_bytes
from app.engine.evaluation import EpochSelection, evaluate_epoch
from app.engine.int8_sim import for_training
from app.engine.model import ServingTask, TaskModel, TaskSpec
from app.engine.predict import encode_examples
from app.engine.prefix import PrefixEncoder
from app.engine.resume import RunCheckpointer, bytes_tensor, tensor_bytes
from app.engine.train_config import (
    REFIT_MIN_SHARE,
    Cancelled,
    EpochFn,
    Progress,
    ProgressFn,
    StopFn,
    TrainConfig,
    TrainResult,
    emit,
    infer_labels,
    seed_everything,
    split_holdout,
)

# ------------------------------------------------------------------------------------ loss, batches


def task_loss(spec: TaskSpec, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    return registry.get(spec.task_type).loss(spec, logits, batch)


def training_batch(
    spec: TaskSpec, features: Sequence[dict], pad_id: int, device: str | torch.device
) -> dict[str, Tensor]:
    """Padded inputs and the task type's targets."""
    batch = collate(features, pad_id)
    batch.update(registry.get(spec.task_type).targets(features, batch["input_ids"].shape[1]))
    return {k: v.to(device) for k, v in batch.items()}


# ------------------------------------------------------------------------------------ optimisation


def _param_groups(models: Sequence[TaskModel], config: TrainConfig) -> list[dict]:
    """AdamW groups: a fine-tuned encoder copy at backbone_lr, the rest (head, prefix, prompt) at
    lr; no weight decay on biases, layer norms, prefixes and prompts. Names are read on each task
    model itself (``finetuned.``, ``prefix.``, ``prompt.``), never on a module that holds them:
    there every name starts with that module's own path and none of the rules would match."""
    groups: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for model in models:
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
    opt: torch.optim.Optimizer, total: int, warmup_ratio: float, anneal: dict
) -> tuple[torch.optim.lr_scheduler.LambdaLR, Callable[[int], float]]:
    """Linear warm-up, then linear decay to 0 at `total`; once `anneal` holds a start (set when early
    stopping triggers), a linear decay from the factor there to 0 at its end instead."""
    warmup = int(total * warmup_ratio)

    def planned(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    def factor(step: int) -> float:
        start = anneal.get("from_step")
        if start is None or step < start:
            return planned(step)
        return anneal["factor"] * max(0.0, (anneal["to_step"] - step) / max(1, anneal["to_step"] - start))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor), planned


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=gen).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


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
    if config.precision == "int8" and spec.method == "fine-tuning":
        raise ValueError("precision int8 trains a prompt for a frozen int8 backbone: not with fine-tuning")
    backbone = for_training(backbone, config.precision, config.int8_keep_ffn_out_fp32)
    infer_labels(spec, train_examples)
    all_examples = list(train_examples)
    held_out = not eval_examples  # none given (None or empty): a split may come out of train
    train_examples, eval_examples = split_holdout(
        train_examples, eval_examples, config.holdout_fraction, config.seed
    )
    held_out = held_out and eval_examples is not None
    if init_kv is not None:
        spec.reparameterize = False  # the flat K/V of the init prefix are the parameters
        spec.layers = list(init_kv.spec.layers)
        spec.prefix_length = init_kv.prefix_length
    spec.validate(backbone.num_layers)
    name = task_name or "task"

    def new_model() -> TaskModel:
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
        return model

    features = encode_examples(spec, backbone.tokenizer, train_examples, with_labels=True)
    result = _fit(
        backbone,
        {name: (new_model(), features, eval_examples)},
        config,
        progress,
        should_stop,
        checkpointer=checkpointer,
        epoch_end=epoch_end,
    )[name]
    if not (held_out and refit_applies(config, len(all_examples) - len(train_examples), len(all_examples))):
        return result
    # refit: the held-out split chose the epoch count; now train on all of train for that many
    epochs = len(result.history)
    refit_config = replace(
        config, epochs=epochs, holdout_fraction=0.0, early_stopping_patience=0, refit=False
    )
    emit(
        progress,
        step=result.steps,
        total=result.steps,
        epoch=float(epochs),
        loss=None,
        message=f"refit: {epochs} epochs on all {len(all_examples)} training examples",
    )
    all_features = encode_examples(spec, backbone.tokenizer, all_examples, with_labels=True)
    offset = result.steps

    def refit_progress(p: Progress) -> None:
        if progress is not None:
            progress(
                replace(
                    p,
                    step=p.step + offset,
                    total=p.total + offset,
                    epoch=p.epoch + epochs,
                    message=_refit_msg(p.message),
                    stage="refit",
                )
            )

    final = _fit(
        backbone,
        {name: (new_model(), all_features, None)},
        refit_config,
        refit_progress,
        should_stop,
        checkpointer=checkpointer.stage("refit") if checkpointer is not None else None,
    )[name]
    return replace(
        result,
        task=final.task,
        history=result.history + [{**h, "refit": True} for h in final.history],
        seconds=result.seconds + final.seconds,
        steps=result.steps + final.steps,
        refit={
            "epochs": epochs,
            "examples": len(all_examples),
            "held_out": len(all_examples) - len(train_examples),
        },
    )


def refit_applies(config: TrainConfig, n_held_out: int, n_all: int) -> bool:
    """Whether a run that held `n_held_out` of its `n_all` training examples out refits on all of
    them: when asked (config.refit) and the held-out share is worth a second run."""
    return bool(config.refit) and n_held_out > 0 and n_held_out >= REFIT_MIN_SHARE * n_all


def _refit_msg(message: str) -> str:
    return f"refit: {message}" if message else "refit"


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
    batch_sizes: Mapping[str, int] | None = None,
) -> dict[str, TrainResult]:
    """The training loop over one or more task models (several share a prefix encoder).
    `batch_sizes`: a task's own batch size, where it differs from config.batch_size."""
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
    opt = torch.optim.AdamW(_param_groups(list(joint.models), config), lr=config.lr)
    sizes = {name: (batch_sizes or {}).get(name, config.batch_size) for name in names}
    steps_per_epoch = sum(math.ceil(len(f) / sizes[n]) for n, (_, f, _) in tasks.items())
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    # early stopping anneals first: the run stops with the learning rate decayed, not at its height
    anneal: dict = {}
    sched, planned_factor = _scheduler(opt, total, config.warmup_ratio, anneal)
    history: list[dict] = []
    selection = EpochSelection(config.early_stopping_patience)
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
    if any(size != config.batch_size for size in sizes.values()):
        fingerprint["batch_sizes"] = sizes
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
            "bad_epochs": selection.bad_epochs,
            "anneal": [anneal.get("from_step", -1), anneal.get("to_step", -1), anneal.get("factor", 0.0)],
            "total_now": total,
            "best_score": selection.best_score,
            "best": {
                n: [sc, bytes_tensor(checkpoint_bytes(srv, backbone)), m, ep]
                for n, (sc, srv, m, ep) in selection.best.items()
            },
        }

    skip, resuming, finished = 0, False, False
    saved = checkpointer.load(fingerprint) if checkpointer is not None else None
    if saved is not None:
        finished = bool(saved.get("done"))  # a stage that had ended (a multi-task job's joint stage)
        with torch.no_grad():
            for n, p in trainable:
                p.copy_(saved["params"][n])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        step, epoch, skip = saved["step"], saved["epoch"] - 1, saved["count"]
        history, selection.bad_epochs = saved["history"], saved["bad_epochs"]
        selection.best_score = saved["best_score"]
        if saved["anneal"][0] >= 0:
            anneal.update(from_step=saved["anneal"][0], to_step=saved["anneal"][1], factor=saved["anneal"][2])
        total = saved["total_now"]
        selection.best = {
            n: (sc, load_checkpoint_bytes(tensor_bytes(blob), backbone), m, ep)
            for n, (sc, blob, m, ep) in saved["best"].items()
        }
        gen.set_state(saved["gen_epoch"])
        resume_rng = (saved["torch_rng"], saved["py_rng"], saved["running"])
        resuming = True
        emit(
            progress,
            step=step,
            total=total,
            epoch=float(epoch),
            loss=None,
            message=f"resumed from step {step}",
        )
    while step < total and not finished:
        epoch += 1
        gen_epoch_state = gen.get_state()
        plan = [(name, b) for name in names for b in _batches(len(tasks[name][1]), sizes[name], gen)]
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
                emit(
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
        metrics, scores, snapshot = evaluate_epoch(
            backbone,
            {name: (tasks[name][0], tasks[name][2]) for name in names},
            epoch,
            config.eval_batch_size,
        )
        record = {"epoch": epoch, "step": step, "loss": running / max(1, count), "metrics": metrics}
        history.append(record)
        # one selection for all tasks: with a shared prefix they must come from the same epoch
        mean = sum(scores) / len(scores)
        emit(
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
        stop = selection.stop_after(epoch, mean, scores, snapshot)
        if stop and "from_step" not in anneal and config.anneal_epochs > 0:
            end = step + config.anneal_epochs * steps_per_epoch
            if end < total:  # (else the planned decay ends first: go on to its end)
                anneal.update(from_step=step, to_step=end, factor=planned_factor(step))
                total = end
                emit(
                    progress,
                    step=step,
                    total=total,
                    epoch=float(epoch),
                    loss=record["loss"],
                    message=(
                        f"no better score for {selection.bad_epochs} epochs: "
                        f"annealing the learning rate over {config.anneal_epochs} more"
                    ),
                )
        elif stop and config.anneal_epochs == 0:
            emit(
                progress,
                step=step,
                total=total,
                epoch=float(epoch),
                loss=record["loss"],
                message="early stopping",
            )
            break
    if checkpointer is not None and not finished:  # the end too: a later stage may fail after it
        checkpointer.save({**run_state(), "done": True})
    seconds = time.monotonic() - start_time
    backbone_params = backbone.num_parameters()
    out = {}
    for name in names:
        model = tasks[name][0]
        score, serving, m, ep = selection.best[name]
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
