"""Shipping: the best single-task P-Tuning v2 prefix of each shippable task, published into
``prompts_store/`` as version 1 with its data source, license, metrics and training record."""

from __future__ import annotations

import json
from pathlib import Path

from bench.quality import log, plan
from bench.quality.report import best_pt2, index_records


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
    budget: plan.Budget,
    backbone,
    manifests: dict,
    command: str,
    store_root: Path | None = None,
) -> list[dict]:
    """Publish the best single-task P-Tuning v2 prefix of each shippable task as version 1."""
    from app.engine.checkpoint import checkpoint_bytes, load_checkpoint, load_checkpoint_bytes
    from app.engine.predict import predict
    from app.store import PromptStore

    main, _ = index_records(records)
    store_root = store_root or plan.STORE_ROOT
    shipped = []
    for dataset, name in plan.SHIP_TASKS.items():
        rec = best_pt2(main, dataset)
        if rec is None:
            log(f"ship: no P-Tuning v2 run for {dataset}; skipped")
            continue
        bar = SHIP_BAR.get(dataset)
        if bar is not None and rec["score"] < bar:
            # a prefix that is mostly wrong is the first thing a new user would try: not shipped, and
            # a version shipped earlier goes too
            PromptStore(store_root).delete_task(name)
            log(
                f"ship: {dataset}: {rec['metric']} {rec['score']:.1f} is below the bar of {bar:.0f}; "
                f"not shipped (train your own, on a GPU for {dataset}); {name} removed from the store"
            )
            continue
        if not rec.get("checkpoint") or not (plan.REPO_ROOT / rec["checkpoint"]).is_file():
            # trained prompts live in the git-ignored .cache: a fresh checkout has the results,
            # not the weights; the version already in the store stays
            log(f"ship: {dataset}: the checkpoint of {rec['key']} is not in this checkout; store left as is")
            continue
        manifest = manifests.get(dataset) or {}
        if not manifest.get("redistributable", False):
            log(f"ship: {dataset} is not redistributable; skipped")
            continue
        task = load_checkpoint_bytes((plan.REPO_ROOT / rec["checkpoint"]).read_bytes(), backbone)
        tb = budget.task(dataset)
        metrics = {
            **{k: v for k, v in rec["metrics"].items() if k in SHIP_METRICS[dataset]},
            "primary_metric": rec["metric"],
            "eval_split": rec["eval_split"],
            "eval_size": rec["n_eval"],
            "eval_subset": "the whole split"
            if tb.n_eval is None
            else f"random sample of {tb.n_eval} (seed {plan.DATA_SEED})",
        }
        meta = {
            "source": "bench.quality",
            "description": f"P-Tuning v2 ({rec['method']}) on {dataset}, {rec['backbone']} backbone",
            "metrics": metrics,
            "data": _data_source(
                manifest, f"train: {rec['n_train']} examples of '{tb.train_split}' (seed {plan.DATA_SEED})"
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
        path, sha256, size_bytes = publish(store_root, name, data)
        loaded = load_checkpoint(path, backbone, expected_sha256=sha256)
        sample = SAMPLE_INPUTS[dataset]
        preds = predict(backbone, loaded, sample)
        log(
            f"ship: {name} v1 <- {rec['method']} ({rec['metric']} {rec['score']:.2f}), {size_bytes / 1e6:.2f} MB; "
            f"sample prediction: {json.dumps(_short(preds[0]))[:200]}"
        )
        shipped.append(
            {
                "task": name,
                "dataset": dataset,
                "path": str(path),
                "sha256": sha256,
                "size_bytes": size_bytes,
                "score": rec["score"],
                "method": rec["method"],
            }
        )
    return shipped


def _short(pred: dict) -> dict:
    return {k: v for k, v in pred.items() if k != "scores"}


#: The score a prefix must reach to be shipped (the primary metric, in percent). SQuAD needs far more
#: training than a CPU budget gives (docs/quality.md: 15.2 F1 after 2,000 questions and 21 minutes on
#: one thread; fine-tuning the whole encoder on the same budget got 9.5): below 50 F1 it would mostly
#: answer wrongly, so it is not shipped and QA is a "train your own on a GPU" task type.
SHIP_BAR = {"squad": 50.0}

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


def publish(store_root: Path, name: str, blob: bytes):
    """Publish a shipped task into the store as its only version (v1): the task's old files go, then
    app.versions.publish (the path every trained version takes) writes the file and the sidecar and
    registers it, here in a scratch registry. The repository's prompts_store/ is registered into a
    server's own database by its start-up sync. Returns (path, sha256, size_bytes)."""
    import tempfile

    from app import versions
    from app.db.session import dispose_engines, get_sessionmaker, run_migrations
    from app.store import PromptStore

    store = PromptStore(store_root)
    store.delete_task(name)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'ship.db'}"
        run_migrations(url)
        with get_sessionmaker(url)() as s:
            published = versions.publish(s, store, name, blob, source="bench.quality")
        dispose_engines()
    return store.path(name, published.version), published.sha256, published.size_bytes
