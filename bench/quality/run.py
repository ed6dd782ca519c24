"""Executing the quality benchmark's runs: train, evaluate, keep the prompt, cache the record."""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from bench.quality import data, log, plan
from bench.quality.plan import METHOD_HP, Budget, MethodHP, Run, TaskBudget, run_hyperparameters


def training_for(tb: TaskBudget, hp: MethodHP, labels: list[str] | None, **kw):
    """(TaskSpec, TrainConfig) of a run on ``tb`` (``kw``: layers, head, epochs, batch_size), mapped
    by the engine's options table as every training surface is. Every run has eval data; no
    holdout is asked for (a library default, not the table's)."""
    from app.engine.options import build_training

    flat = {**run_hyperparameters(tb, hp, labels, **kw), "holdout_fraction": 0.0}
    return build_training(tb.task_type, flat, labels)


def product_training(task_type: str, labels: list[str] | None):
    """(TaskSpec, TrainConfig) of a POST /train with no hyperparameters: the product's defaults
    for the task type (its epoch cap, early stopping and held-out split included)."""
    from app.engine.options import build_training

    return build_training(task_type, {}, labels)


def lora_prepare(hp: MethodHP):
    """A train_task ``prepare`` hook: PEFT LoRA adapters into the task model's encoder copy (whose
    own weights peft freezes), so only the adapters and the head train."""

    def prepare(model) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        assert model.finetuned is not None, "LoRA goes on the fine-tuning copy of the encoder"
        cfg = LoraConfig(
            r=hp.lora_rank,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=list(hp.lora_targets or ()),
        )
        inject_adapter_in_model(cfg, model.finetuned.model)
        for name, p in model.finetuned.model.named_parameters():
            p.requires_grad_("lora_" in name)

    return prepare


def score_at_max_length(backbone, task, ev: list, tb: TaskBudget) -> dict:
    """A trained task scored on ``ev`` at the task budget's max_length (the other columns' input
    length): a defaults run trains and predicts at the product's max_length, so on long inputs
    (Brown POS sentences) its score counts words the others lose to truncation."""
    from dataclasses import replace as dc_replace

    from app.engine.evaluation import evaluate

    short = dc_replace(task, spec=dc_replace(task.spec, max_length=tb.max_length))
    metrics = evaluate(backbone, short, ev, batch_size=64)
    return {"max_length": tb.max_length, "score": round(score_of(metrics, tb.metric), 2), "metrics": metrics}


def score_of(metrics: dict, metric: str) -> float:
    """The primary metric in percent (SQuAD's are percent already)."""
    v = float(metrics.get(metric, 0.0))
    return v if metric in ("f1", "exact_match") and "exact_match" in metrics else 100.0 * v


class ProgressPrinter:
    def __init__(self, label: str, every_s: float = 30.0):
        self.label, self.every_s, self.last = label, every_s, 0.0
        self.t0 = time.monotonic()

    def __call__(self, p) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s or p.step == p.total:
            self.last = now
            loss = f"{p.loss:.4f}" if p.loss is not None else "-"
            task = f" [{p.task}]" if p.task else ""
            log(
                f"  {self.label}{task}: step {p.step}/{p.total} epoch {p.epoch:.2f} loss {loss} ({now - self.t0:.0f}s)"
            )


def stored_params(task) -> int:
    """Parameters a served task stores (folded prefix / prompt + head), without a fine-tuned encoder."""
    n = sum(p.numel() for p in task.head.parameters())
    if task.kv is not None and task.layer_mask is not None:
        n += int(task.kv[task.layer_mask].numel())
    if task.prompt is not None:
        n += task.prompt.numel()
    return n


def save_ckpt(task, backbone, key: str, meta: dict) -> str | None:
    if task.finetuned is not None:
        return None  # a whole encoder copy: not kept
    from app.engine.checkpoint import atomic_write, checkpoint_bytes

    path = plan.CKPT_DIR / f"{key}.safetensors"
    atomic_write(path, checkpoint_bytes(task, backbone, meta))
    return str(path.relative_to(plan.REPO_ROOT))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def evaluate_and_record(
    run: Run, key: str, mode: str, backbone, tb: TaskBudget, method: str, result, train_s: float, ev: list,
    n_train: int, config,
) -> dict:  # fmt: skip
    """Evaluate a trained run on its eval set, keep its prompt checkpoint, and build its record."""
    from app.engine.evaluation import evaluate

    t0 = time.monotonic()
    metrics = evaluate(backbone, result.task, ev, batch_size=64)
    eval_s = time.monotonic() - t0
    ckpt = save_ckpt(
        result.task, backbone, key, {"source": "bench.quality", "run_key": key, "metrics": metrics}
    )
    bb_params = backbone.num_parameters()
    stored = stored_params(result.task) if result.task.finetuned is None else result.num_trainable
    return {
        "key": key,
        "mode": mode,
        "backbone": backbone.name,
        "task": tb.dataset,
        "method": method,
        "variant": run.variant,
        "metric": tb.metric,
        "score": round(score_of(metrics, tb.metric), 2),
        "metrics": metrics,
        "eval_split": tb.eval_split,
        "n_train": n_train,
        "n_eval": len(ev),
        "num_trainable": result.num_trainable,
        "trainable_fraction": result.trainable_fraction,
        "stored_params": stored,
        "stored_fraction": stored / bb_params,
        "backbone_params": bb_params,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "steps": result.steps,
        "epochs": config.epochs,
        "hyperparameters": {
            "spec": result.task.spec.to_dict(),
            "train": config.to_dict(),
            "budget": tb.to_dict(),
        },
        "checkpoint": ckpt,
        "threads": torch_threads(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def execute_single(run: Run, key: str, mode: str, backbone, manifests: dict) -> dict:
    from app.engine.train import train_task

    tb = run.budget
    assert tb is not None
    train, ev = data.load_task_data(tb)
    labels = (manifests.get(tb.dataset) or {}).get("labels")
    prepare = lora_hp = None
    if run.method == plan.PRODUCT_DEFAULTS:
        spec, config = product_training(tb.task_type, labels)
    else:
        spec, config = training_for(tb, run.method_hp, labels, layers=run.layers, head=run.head)
        if run.method_hp.lora_rank:
            lora_hp = run.method_hp
            prepare = lora_prepare(lora_hp)
    label = f"{tb.dataset}/{run.method}{'/' + run.variant if run.variant else ''}"
    # the train data the engine fits on (a defaults run holds out part of it, as POST /train does)
    from app.engine.train_config import split_holdout

    n_fit = len(split_holdout(train, None, config.holdout_fraction, config.seed)[0])
    log(
        f"train {label}: {len(train)} train ({len(train) - n_fit} held out), {len(ev)} eval ({tb.eval_split}), "
        f"{config.epochs} epochs{' at most' if config.early_stopping_patience else ''}"
    )
    t0 = time.monotonic()
    result = train_task(
        backbone,
        spec,
        train,
        None,
        config,
        progress=ProgressPrinter(label),
        task_name=tb.dataset,
        prepare=prepare,
    )
    train_s = time.monotonic() - t0
    rec = evaluate_and_record(
        run, key, mode, backbone, tb, run.method, result, train_s, ev, len(train), config
    )
    if run.method == plan.PRODUCT_DEFAULTS and spec.max_length != tb.max_length:
        rec["at_budget_max_length"] = score_at_max_length(backbone, result.task, ev, tb)
    rec["n_holdout"] = len(train) - n_fit
    rec["epochs_run"] = len([h for h in result.history if not h.get("refit")])
    rec["best_epoch"] = result.best_epoch
    if result.refit:  # the published model: all of train, for the epochs the held-out run chose
        rec["refit"] = result.refit
    # per epoch: the mean training loss and, where the run holds data out, its held-out score
    rec["curve"] = [
        {
            "epoch": h["epoch"],
            "loss": round(float(h["loss"]), 4),
            **(
                {"held_out": round(score_of(h["metrics"][tb.dataset], tb.metric), 2)}
                if tb.dataset in (h.get("metrics") or {})
                else {}
            ),
            **({"refit": True} if h.get("refit") else {}),
        }
        for h in result.history
    ]
    if lora_hp is not None:
        rec["lora"] = {
            "rank": lora_hp.lora_rank,
            "alpha": lora_hp.lora_alpha,
            "dropout": lora_hp.lora_dropout,
            "targets": list(lora_hp.lora_targets or ()),
        }
    log(
        f"done {label}: {tb.metric} {rec['score']:.2f} ({train_s:.0f}s train, {rec['eval_seconds']:.0f}s eval, "
        f"{rec['epochs_run']} epochs, best {rec['best_epoch']}"
        f"{', refit ' + str(rec['refit']['epochs']) + ' epochs on all' if rec.get('refit') else ''}, "
        f"{100 * rec['trainable_fraction']:.2f}% trainable)"
    )
    return rec


def execute_multitask(run: Run, key: str, budget: Budget, backbone, manifests: dict) -> dict:
    """Shared prefix over the tasks (own heads), evaluated; then each task continues alone."""
    from app.engine.multitask import train_multitask
    from app.engine.train import train_task

    names = run.task.split("+")
    pt2 = METHOD_HP["p-tuning-v2"]
    splits, specs = {}, {}
    for t in names:
        tb = budget.task(t)
        splits[t] = (tb, *data.load_task_data(tb))
        # each task reads its own single-task prefix length of the shared prefix (Brown POS: 64)
        own = replace(pt2, prefix_length=plan.multitask_prefix_length(budget, t))
        specs[t], _ = training_for(tb, own, (manifests.get(t) or {}).get("labels"))
    _, mt_config = training_for(
        budget.task(names[0]), pt2, None, epochs=budget.mt_epochs, batch_size=budget.mt_batch_size
    )
    log(
        f"train multi-task over {names}: {budget.mt_epochs} joint epochs, then {budget.mt_per_task_epochs} per task "
        f"at {budget.mt_per_task_lr_scale:g}x the LR"
    )
    cont_hp = replace(pt2, lr=pt2.lr * budget.mt_per_task_lr_scale)  # the per-task stage's LR
    t0 = time.monotonic()
    shared = train_multitask(
        backbone,
        {t: (specs[t], splits[t][1], None) for t in names},
        mt_config,
        progress=ProgressPrinter("multi-task"),
        per_task_epochs=0,
    )
    shared_s = time.monotonic() - t0
    records = []
    for t in names:
        tb, train, ev = splits[t]
        res = shared[t]
        rec = evaluate_and_record(
            run, f"{key}-{t}-shared", budget.name, backbone, tb, "mpt-shared", res, shared_s, ev, len(train),
            mt_config,
        )  # fmt: skip
        rec["multitask_tasks"] = names
        records.append(rec)
        log(f"done {t}/mpt-shared: {tb.metric} {rec['score']:.2f}")
        _, cont_config = training_for(tb, cont_hp, None, epochs=budget.mt_per_task_epochs)
        t2 = time.monotonic()
        per = train_task(
            backbone, copy.deepcopy(res.task.spec), train, None, cont_config,
            progress=ProgressPrinter(f"{t}/mpt-per-task"), init_kv=res.task, task_name=t,
        )  # fmt: skip
        per_s = time.monotonic() - t2
        rec = evaluate_and_record(
            run, f"{key}-{t}-per-task", budget.name, backbone, tb, "mpt-per-task", per, shared_s + per_s, ev,
            len(train), cont_config,
        )  # fmt: skip
        rec["multitask_tasks"] = names
        rec["steps"] = per.steps + res.steps
        records.append(rec)
        log(f"done {t}/mpt-per-task: {tb.metric} {rec['score']:.2f}")
    return {"key": key, "kind": "multitask", "records": records}


def execute(run: Run, key: str, budget: Budget, backbone, manifests: dict) -> dict:
    if run.kind == "multitask":
        return execute_multitask(run, key, budget, backbone, manifests)
    return execute_single(run, key, budget.name, backbone, manifests)


# ------------------------------------------------------------------------------------ cache


def cache_path(out: Path, key: str) -> Path:
    return out / "runs" / f"{key}.json"


def load_cached(out: Path, key: str) -> dict | None:
    p = cache_path(out, key)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("key") == key else None


def store_cached(out: Path, key: str, doc: dict) -> None:
    p = cache_path(out, key)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, p)


def load_for_table(out: Path, r: Run, budget: Budget, backbone: str) -> dict | None:
    """A planned run's cached document: at its key, or else at its key from before the optimizer
    fix (plan.OPTIMIZER_REVISION), its records then marked ``"optimizer_legacy": True``."""
    doc = load_cached(out, r.key(budget, backbone))
    if doc is not None:
        return doc
    old = r.legacy_key(budget, backbone)
    doc = load_cached(out, old) if old else None
    if doc is None:
        return None
    if doc.get("kind") == "multitask":
        return {**doc, "records": [{**rec, "optimizer_legacy": True} for rec in doc.get("records") or []]}
    return {**doc, "optimizer_legacy": True}


def expand(doc: dict) -> list[dict]:
    """A cached run document -> its table records."""
    if doc.get("kind") == "multitask":
        return list(doc.get("records") or [])
    return [doc]
