"""Multi-task training (the paper's MPT-2): one P-Tuning v2 prefix shared by several tasks, each
with its own head, trained jointly through app.engine.train's loop; then, optionally, each task
continues alone from the shared prefix. Each task keeps its own prefix length: the shared prefix
is as long as the longest, and a shorter task reads its first slots. With `task_configs`, each
task also keeps its own batch size in the joint stage and its own settings in the per-task one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from app.engine.backbone import Backbone
from app.engine.int8_sim import for_training
from app.engine.model import TaskModel, TaskSpec, new_prefix_encoder
from app.engine.predict import encode_examples
from app.engine.resume import RunCheckpointer
from app.engine.train import _fit, train_task
from app.engine.train_config import (
    ProgressFn,
    StopFn,
    TrainConfig,
    TrainResult,
    infer_labels,
    seed_everything,
    split_holdout,
)


def train_multitask(
    backbone: Backbone,
    tasks: dict[str, tuple[TaskSpec, Sequence, Sequence | None]],
    config: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    per_task_epochs: int = 0,
    checkpointer: RunCheckpointer | None = None,
    task_configs: Mapping[str, TrainConfig] | None = None,
) -> dict[str, TrainResult]:
    """One prefix shared by all tasks (each its own head), trained jointly on batches drawn from
    every task; then, with per_task_epochs > 0, each task continues alone from the shared prefix.
    `checkpointer`: the joint stage saves its state there and each per-task stage beside it
    (`checkpointer.stage(name)`), so a resumed job goes on from the stage it was in.
    `task_configs`: a task's own TrainConfig (by name). The joint stage trains at `config`'s
    settings but draws each task's batches at its own batch size; the per-task stage trains each
    task at its own settings. Without it, every task trains at `config`'s."""
    config = config or TrainConfig()
    own = {name: (task_configs or {}).get(name, config) for name in tasks}
    if len(tasks) < 2:
        raise ValueError("multi-task training needs at least two tasks")
    backbone = for_training(backbone, config.precision, config.int8_keep_ffn_out_fp32)
    for name, (spec, train, _) in tasks.items():
        if spec.method != "p-tuning-v2":
            raise ValueError(f"task {name!r}: multi-task training shares a P-Tuning v2 prefix")
        infer_labels(spec, train)
    first = next(iter(tasks.values()))[0]
    first.validate(backbone.num_layers)
    for spec, _, _ in tasks.values():
        # one prefix: its layers and form are the first task's; each task keeps its own length
        spec.layers, spec.reparameterize = list(first.layers), first.reparameterize
        spec.validate(backbone.num_layers)
    # the shared prefix has the longest task's slots; a task with a shorter prefix_length reads
    # the first ones (so every slot it reads is trained by all tasks, the rest by the longer ones)
    slots = max(spec.prefix_length for spec, _, _ in tasks.values())
    seed_everything(config.seed)
    shared = new_prefix_encoder(replace(first, prefix_length=slots), backbone).to(backbone.device)
    models: dict[str, tuple[TaskModel, list[dict], Sequence | None]] = {}
    tasks = {
        name: (spec, *split_holdout(train, ev, config.holdout_fraction, config.seed))
        for name, (spec, train, ev) in tasks.items()
    }
    for name, (spec, train, ev) in tasks.items():
        model = TaskModel(spec, backbone, shared_prefix=shared).to(backbone.device)
        feats = encode_examples(spec, backbone.tokenizer, list(train), with_labels=True)
        models[name] = (model, feats, ev)
    results = _fit(
        backbone,
        models,
        config,
        progress,
        should_stop,
        checkpointer,
        batch_sizes={name: c.batch_size for name, c in own.items()},
    )
    if per_task_epochs <= 0:
        return results
    out = {}
    for name, (spec, train, ev) in tasks.items():
        cont = TrainConfig(**{**own[name].to_dict(), "epochs": per_task_epochs, "max_steps": None})
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
            checkpointer=checkpointer.stage(name) if checkpointer is not None else None,
        )
        result.history = results[name].history + result.history
        out[name] = result
    return out
