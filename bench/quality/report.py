"""The quality benchmark's tables: markdown and JSON of the run records, with the run metadata."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from bench.quality import data, figure
from bench.quality import plan as C
from bench.quality.run import torch_threads


def _fmt(rec: dict | None) -> str:
    if rec is None:
        return "—"
    return _score(rec) + (" †" if rec.get("optimizer_legacy") else "")


def _score(rec: dict) -> str:
    short = rec.get("at_budget_max_length")
    if short and rec["metric"] != "f1":
        return f"{rec['score']:.1f} ({short['score']:.1f} at {short['max_length']} tokens)"
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


#: The backbone of every row; rows of another backbone (``--backbone mpnet``) follow each task's
#: own row, marked with the short name.
PRIMARY_BACKBONE = "all-MiniLM-L6-v2"
BACKBONE_NAMES = {"all-MiniLM-L6-v2": "MiniLM-L6", "all-mpnet-base-v2": "MPNet-base"}


def by_backbone(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by backbone, the primary first, then in first-seen order."""
    out: dict[str, list[dict]] = {PRIMARY_BACKBONE: []}
    for r in records:
        out.setdefault(r.get("backbone") or PRIMARY_BACKBONE, []).append(r)
    return {b: rs for b, rs in out.items() if rs}


def row_label(task: str, backbone: str) -> str:
    return task if backbone == PRIMARY_BACKBONE else f"{task}, {BACKBONE_NAMES.get(backbone, backbone)}"


def best_pt2(main: dict, task: str) -> dict | None:
    cands = [main.get((task, m)) for m in ("p-tuning-v2", "p-tuning-v2-mlp")]
    cands = [c for c in cands if c is not None]
    return max(cands, key=lambda r: r["score"]) if cands else None


def render_markdown(records: list[dict], budget: C.Budget, meta: dict) -> str:
    groups = by_backbone(records)
    indexed = {b: index_records(rs) for b, rs in groups.items()}
    ablation = indexed.get(PRIMARY_BACKBONE, ({}, {}))[1]  # the ablations run on the primary only
    tasks = [t for t in C.TASK_ORDER if any(k[0] == t for m, a in indexed.values() for k in [*m, *a])]
    # (task, backbone) rows: each task's primary row, then its rows on other backbones
    rows = [(t, b) for t in tasks for b, (m, _) in indexed.items() if any(k[0] == t for k in m)]
    methods = [*C.METHODS, *C.MULTITASK_METHODS]
    sizes = {b: rs[0].get("backbone_params") for b, rs in groups.items()}
    others = "; ".join(
        f"{b} ({(sizes[b] or 0) / 1e6:.1f}M parameters) in the rows marked {BACKBONE_NAMES.get(b, b)}"
        for b in groups
        if b != PRIMARY_BACKBONE
    )
    lines = [
        f"# Quality benchmark ({budget.name} budget)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Backbone: {PRIMARY_BACKBONE} ({(sizes.get(PRIMARY_BACKBONE) or meta['backbone_params']) / 1e6:.1f}M "
        f"parameters){'; ' + others if others else ''}. CPU, "
        f"{meta['threads']} thread(s) a run, seeds: data {C.DATA_SEED}, training {C.TRAIN_SEED}.  ",
        f'Generated {meta["generated_at"]}. Scores in percent; "—" = not run yet.',
        "",
        "## Main table",
        "",
        "| task (metric, eval set) | "
        + " | ".join(C.METHOD_TABLE_NAMES[m] for m in methods)
        + " | majority class | best PT2 − FT | target met | defaults − FT | LoRA − FT |",
        "|---" * (len(methods) + 6) + "|",
    ]
    for t, b in rows:
        tb = budget.task(t)
        main = indexed[b][0]
        n_eval = next((r["n_eval"] for (tt, _), r in main.items() if tt == t), tb.n_eval)
        cells = [_fmt(main.get((t, m))) for m in methods]
        ft, pt2 = main.get((t, "fine-tuning")), best_pt2(main, t)
        majority = data.majority_share(tb)
        gap = target = "—"
        if ft and pt2:
            d = pt2["score"] - ft["score"]
            gap = f"{d:+.1f}"
            target = "yes" if d >= -1.0 and pt2["trainable_fraction"] <= 0.03 else f"no ({-d - 1:.1f} short)"
            if majority is not None and max(ft["score"], pt2["score"]) <= majority + 1.0:
                target = "n/a (no method above the majority class)"
        vs_ft = [
            f"{main[(t, m)]['score'] - ft['score']:+.1f}" if ft and (t, m) in main else "—"
            for m in ("defaults", "lora")
        ]
        lines.append(
            f"| {row_label(t, b)} ({METRIC_NAMES[t]}, {tb.eval_split} n={n_eval}) | "
            + " | ".join(cells)
            + f" | {'—' if majority is None else f'{majority:.1f}'} | {gap} | {target} | "
            + " | ".join(vs_ft)
            + " |"
        )
    lines += [
        "",
        "Target: P-Tuning v2 (best of flat / MLP) within 1 point of fine-tuning with <= 3% trainable parameters.",
        '"P-Tuning v2, defaults": what POST /train with no hyperparameters trains (the product\'s per-task-type '
        "defaults, epoch cap with early stopping on a held-out 10% of the same training subset, then a refit on "
        "all of it for the epochs chosen); "
        "LoRA: rank-8 adapters on query/value and the head, fine-tuning's budget. "
        "(x at N tokens): the same run scored at the other columns' max_length (the gaps use the first number).",
        "SQuAD cells are EM / F1 (the gap uses F1). CoNLL is a 76-sentence sanity check, not a benchmark.",
        *(
            [
                "† trained before the optimizer fix: a fine-tuned encoder at the head's LR (1e-3) instead of "
                "its own, and weight decay 0.01 on prefixes and prompts; the same command reruns it."
            ]
            if any(r.get("optimizer_legacy") for r in records)
            else []
        ),
        "",
        "## Trainable parameters (training time / stored and served), % of the backbone",
        "",
        "| task | " + " | ".join(C.METHOD_TABLE_NAMES[m] for m in methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for t, b in rows:
        cells = []
        for m in methods:
            r = indexed[b][0].get((t, m))
            cells.append(
                "—" if r is None else f"{_pct(r['trainable_fraction'])} / {_pct(r['stored_fraction'])}"
            )
        lines.append(f"| {row_label(t, b)} | " + " | ".join(cells) + " |")
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
        f"Multi-task: one prefix shared by {', '.join(C.MULTITASK_TASKS)} (own heads; each task reads the first "
        + ", ".join(f"{C.multitask_prefix_length(budget, t)} ({t})" for t in C.MULTITASK_TASKS)
        + f" of its slots, its own P-Tuning v2 length), {budget.mt_epochs} joint "
        f"epoch(s) at batch {budget.mt_batch_size}, then {budget.mt_per_task_epochs} epoch(s) per task from the shared prefix and heads "
        f"at {budget.mt_per_task_lr_scale:g}x the P-Tuning v2 LR.",
        "",
        "| method | lr (head / prompt) | encoder lr | notes |",
        "|---|---|---|---|",
    ]
    for m in C.METHODS:
        if m == C.PRODUCT_DEFAULTS:
            for tt in dict.fromkeys(budget.task(t).task_type for t in tasks):
                d = C.product_defaults(tt)
                sp, tr = d["spec"], d["train"]
                lines.append(
                    f"| defaults ({tt}) | {tr['lr']:g} | — | the product's defaults: prefix length "
                    f"{sp['prefix_length']}, batch {tr['batch_size']}, max_length {sp['max_length']}, at most "
                    f"{tr['epochs']} epochs, early stopping patience {tr['early_stopping_patience']} on a held-out "
                    f"{tr['holdout_fraction']:g} of train (at most {d['max_holdout']}), best epoch kept"
                    + (", then refit on all of train for the epochs run |" if tr.get("refit") else " |")
                )
            continue
        hp = C.METHOD_HP[m]
        if m == C.LORA:
            lines.append(
                f"| lora | {hp.lr:g} | frozen (adapters {hp.backbone_lr:g}) | LoRA rank {hp.lora_rank} on "
                f"{', '.join(hp.lora_targets or ())}, alpha {hp.lora_alpha:g}, dropout {hp.lora_dropout:g}; "
                "adapters + head trained |"
            )
            continue
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
    from app.engine.backbone import BACKBONE_ALIASES

    for (bb, m), hp in C.BACKBONE_METHOD_HP.items():
        name = BACKBONE_ALIASES.get(bb, bb)
        if name in groups:
            lines.append(
                f"| {m} on {BACKBONE_NAMES.get(name, name)} | {hp.lr:g} | {hp.backbone_lr:g} | "
                "exception to the row above (every task on that backbone) |"
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
        "no early stopping: the last epoch is evaluated once (except the defaults runs, which train as the product does).",
        "",
        "## Runs",
        "",
        "| task | method | variant | score | n_train | n_eval | steps | train s | eval s | trainable |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [r for rs in groups.values() for r in rs]:
        lines.append(
            f"| {row_label(r['task'], r.get('backbone') or PRIMARY_BACKBONE)} | {r['method']} | {r.get('variant') or ''} | {_fmt(r)} | {r['n_train']} | {r['n_eval']} | "
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
            "method_tasks": {m: list(ts) for m, ts in budget.method_tasks.items()},
        },
        "method_hyperparameters": {m: hp.key_dict() for m, hp in C.METHOD_HP.items()},
        "task_method_exceptions": {f"{t}/{m}": hp.key_dict() for (t, m), hp in budget.task_method_hp.items()},
        "seeds": {"data": C.DATA_SEED, "train": C.TRAIN_SEED},
        "runs": records,
        "pending": pending,
    }
    jpath.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    md = render_markdown(records, budget, meta)
    svg = figure.render_svg(by_backbone(records), BACKBONE_NAMES)
    if svg is not None:
        spath = out / f"quality{suffix}.svg"
        spath.write_text(svg)
        md += (
            "\n## Figure\n\nScore against the parameters stored per task, fine-tuning's score dashed "
            f"and the 1-point band shaded:\n\n![quality: score against parameters stored per task]({spath.name})\n"
        )
    if pending:
        md += "\nNot run yet (resume with the same command): " + ", ".join(pending) + "\n"
    mpath.write_text(md)
    return jpath, mpath


def dedupe(records: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in records:
        k = (r["key"], r.get("variant") or "")
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def run_meta(command: str, backbone, budget: C.Budget, manifests: dict | None = None) -> dict:
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
        "threads": torch_threads(),
        "python": platform.python_version(),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
