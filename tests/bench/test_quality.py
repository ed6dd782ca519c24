"""The quality benchmark's plumbing (bench/quality/): budgets, run keys, resume, tables,
shipping; and (slow) that every task shipped in prompts_store/ loads and predicts on MiniLM."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.quality import cli, report, ship
from bench.quality import data as D
from bench.quality import plan as C
from bench.quality import run as R

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (REPO / "prompts_store").glob("*/v*.safetensors"))


def _tiny_budget(tmp_dataset: str = "conll_sample") -> C.Budget:
    tb = C.TaskBudget(
        "conll_sample",
        "token-classification",
        "f1",
        "test",
        "test",
        8,
        4,
        1,
        4,
        32,
        prefix_length=2,
        split_at=150,
    )
    return C.Budget(name="tiny", tasks={**C.QUICK.tasks, "conll_sample": tb})


def test_budgets_cover_every_task_and_method():
    for budget in C.BUDGETS.values():
        assert set(budget.tasks) == set(C.TASK_ORDER)
        for t, tb in budget.tasks.items():
            assert tb.dataset == t
            assert tb.metric in ("accuracy", "token_accuracy", "f1")
        assert budget.ablation_task in budget.tasks
    # every method has the bench's hyperparameters but "defaults", which takes the product's
    assert set(C.METHOD_HP) | {C.PRODUCT_DEFAULTS} == set(C.METHODS)
    # prefix LRs are ~100-1000x the fine-tuning encoder LR, as in the paper's repository
    assert C.METHOD_HP["p-tuning-v2"].lr >= 100 * C.METHOD_HP["fine-tuning"].backbone_lr
    # nothing trained on CoNLL or IMDB is ever shipped or shares a multi-task prefix with a shipped task
    assert "conll_sample" not in C.SHIP_TASKS and "imdb_sample" not in C.SHIP_TASKS
    assert "conll_sample" not in C.MULTITASK_TASKS


def test_run_keys_are_stable_and_change_with_the_budget():
    run = C.Run("single", "banking77", "p-tuning-v2", budget=C.FULL.task("banking77"))
    k1 = run.key(C.FULL, "minilm")
    assert k1 == run.key(C.FULL, "minilm")
    assert k1.startswith("full-minilm-banking77-p-tuning-v2-")
    other = replace(run, budget=replace(run.budget, epochs=run.budget.epochs + 1))
    assert other.key(C.FULL, "minilm") != k1
    assert C.Run("single", "banking77", "fine-tuning", budget=run.budget).key(C.FULL, "minilm") != k1


def test_a_task_method_exception_sets_its_own_batch_and_epochs():
    """A (task, method) exception may carry its own batch size / epochs: they reach the training
    config and the run key; an exception without them keys exactly like the plain method."""
    tb = C.FULL.task("brown_pos")
    hp = C.MethodHP(
        "p-tuning-v2", lr=3e-2, batch_size=tb.batch_size + 3, epochs=tb.epochs + 2, prefix_length=7
    )
    spec, config = R.training_for(tb, hp, ["x", "y"])
    assert (config.batch_size, config.epochs, config.lr) == (tb.batch_size + 3, tb.epochs + 2, 3e-2)
    assert spec.prefix_length == 7
    assert R.training_for(tb, C.METHOD_HP["p-tuning-v2"], ["x", "y"])[0].prefix_length == tb.prefix_length
    plain = C.MethodHP("p-tuning-v2", lr=3e-2)
    assert (R.training_for(tb, plain, None)[1].batch_size, plain.key_dict().get("batch_size")) == (
        tb.batch_size,
        None,
    )
    base = C.Run("single", "brown_pos", "p-tuning-v2", budget=tb, hp=plain)
    assert base.key(C.FULL, "minilm") == replace(base, hp=C.MethodHP("p-tuning-v2", lr=3e-2)).key(
        C.FULL, "minilm"
    )
    assert replace(base, hp=hp).key(C.FULL, "minilm") != base.key(C.FULL, "minilm")


def test_plan_orders_priorities_and_reuses_the_layers_all_run():
    runs = C.plan_runs(C.QUICK, list(C.TASK_ORDER), list(C.ALL_METHODS), list(C.ABLATIONS))
    labels = [(r.task, r.method, r.variant) for r in runs]
    assert labels[0][0] == "banking77" and labels[4][0] == "brown_pos"
    assert runs[-1].kind == "multitask" and runs[-1].task == "+".join(C.MULTITASK_TASKS)
    ab = [r for r in runs if r.variant]
    assert [r.variant for r in ab] == list(C.ABLATIONS)
    lower = next(r for r in ab if r.variant == "layers-lower-half")
    assert lower.layers == "lower-half"
    # quick: no ablation overrides -> the layers-all ablation is the main P-Tuning v2 run (one training)
    main_pt2 = next(r for r in runs if r.method == "p-tuning-v2" and not r.variant and r.task == "banking77")
    layers_all = next(r for r in ab if r.variant == "layers-all")
    assert layers_all.key(C.QUICK, "minilm") == main_pt2.key(C.QUICK, "minilm")
    # full: the ablations have their own (smaller) budget -> their own run
    runs_full = C.plan_runs(C.FULL, ["banking77"], ["p-tuning-v2"], ["layers-all"])
    assert runs_full[0].key(C.FULL, "minilm") != runs_full[1].key(C.FULL, "minilm")
    assert not any(r.kind == "multitask" for r in runs_full)
    assert (
        runs_full[1].method_hp == C.FULL.ablation_hp and runs_full[0].method_hp == C.METHOD_HP["p-tuning-v2"]
    )
    # per-task exceptions are carried by the run
    squad = C.plan_runs(C.FULL, ["squad"], ["p-tuning-v2"], [])[0]
    assert squad.method_hp == C.TASK_METHOD_HP[("squad", "p-tuning-v2")]
    brown_full = C.plan_runs(C.FULL, ["brown_pos"], ["p-tuning-v2"], [])[0]
    assert brown_full.method_hp.prefix_length == C.BROWN_PROMPT_BUDGET["prefix_length"]
    # the quick smoke test keeps its task budget (no 15-epoch Brown exception)
    assert C.plan_runs(C.QUICK, ["brown_pos"], ["p-tuning-v2"], [])[0].method_hp == C.METHOD_HP["p-tuning-v2"]


def test_training_for_layers_heads_and_verbalizer_words():
    tb = C.FULL.task("boolq")
    spec, _ = R.training_for(tb, C.METHOD_HP["p-tuning-v2"], ["false", "true"], head="verbalizer")
    assert spec.label_words == ["no", "yes"] and spec.head == "verbalizer"
    spec, _ = R.training_for(
        C.FULL.task("banking77"), C.METHOD_HP["p-tuning-v2-mlp"], ["card_arrival"], layers="upper-half"
    )
    assert spec.reparameterize and spec.layers == "upper-half" and spec.method == "p-tuning-v2"
    _, cfg = R.training_for(C.FULL.task("banking77"), C.METHOD_HP["fine-tuning"], None)
    assert cfg.backbone_lr == C.METHOD_HP["fine-tuning"].backbone_lr and cfg.early_stopping_patience == 0


def _fake_record(task: str, method: str, score: float, variant: str = "", frac: float = 0.005) -> dict:
    metrics = {"exact_match": score - 10, "f1": score} if task == "squad" else {"accuracy": score / 100}
    return {
        "key": f"k-{task}-{method}-{variant}",
        "task": task,
        "method": method,
        "variant": variant,
        "metric": "f1" if task == "squad" else "accuracy",
        "score": score,
        "metrics": metrics,
        "eval_split": "test",
        "n_train": 10,
        "n_eval": 5,
        "num_trainable": 100,
        "trainable_fraction": frac,
        "stored_fraction": frac,
        "train_seconds": 1.0,
        "eval_seconds": 1.0,
        "steps": 3,
        "hyperparameters": {"spec": {"layers": [0, 1, 2], "head": "linear"}},
    }


def test_markdown_table_gaps_and_targets():
    recs = [
        _fake_record("banking77", "fine-tuning", 90.0, frac=1.0),
        _fake_record("banking77", "p-tuning-v2", 89.5),
        _fake_record("banking77", "p-tuning-v2-mlp", 88.0),
        _fake_record("squad", "fine-tuning", 60.0, frac=1.0),
        _fake_record("squad", "p-tuning-v2", 50.0),
        _fake_record("banking77", "p-tuning-v2", 80.0, variant="layers-upper-half"),
    ]
    meta = {
        "command": "python -m bench.quality",
        "backbone": "x",
        "backbone_params": 1e6,
        "threads": 1,
        "generated_at": "now",
    }
    md = report.render_markdown(recs, C.FULL, meta)
    bank = next(line for line in md.splitlines() if line.startswith("| banking77 ("))
    assert "90.0" in bank and "89.5" in bank and "| -0.5 | yes |" in bank
    squad = next(line for line in md.splitlines() if line.startswith("| squad ("))
    assert "50.0 / 60.0" in squad and "-10.0" in squad and "no (9.0 short)" in squad
    assert "layers-upper-half" in md and "## Ablations" in md
    assert "—" in bank  # prompt tuning not run


def test_cache_roundtrip_and_multitask_expansion(tmp_path):
    doc = _fake_record("banking77", "p-tuning-v2", 80.0)
    R.store_cached(tmp_path, doc["key"], doc)
    assert R.load_cached(tmp_path, doc["key"]) == doc
    assert R.load_cached(tmp_path, "missing") is None
    (tmp_path / "runs" / "bad.json").write_text("{not json")
    assert R.load_cached(tmp_path, "bad") is None
    mt = {"key": "m", "kind": "multitask", "records": [doc, doc]}
    assert len(R.expand(mt)) == 2 and R.expand(doc) == [doc]


def test_report_only_resumes_from_cache_without_training(tmp_path, monkeypatch, tiny_backbone):
    """--report-only: cached runs fill the table, the rest are listed as pending; nothing trains."""
    monkeypatch.setattr(D, "prepare_datasets", lambda names: {})
    import app.engine.backbone as B

    monkeypatch.setattr(B, "load_backbone", lambda name=None, device="cpu": tiny_backbone)
    run = C.plan_runs(C.QUICK, ["banking77"], ["p-tuning-v2"], [])[0]
    key = run.key(C.QUICK, "minilm")
    rec = {**_fake_record("banking77", "p-tuning-v2", 42.0), "key": key}
    R.store_cached(tmp_path, key, rec)

    def boom(*a, **k):
        raise AssertionError("must not train")

    monkeypatch.setattr(R, "execute_single", boom)
    rc = cli.main(
        [
            "--quick",
            "--tasks",
            "banking77",
            "--methods",
            "p-tuning-v2,fine-tuning",
            "--ablations",
            "none",
            "--out",
            str(tmp_path),
            "--report-only",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "quality-quick.json").read_text())
    assert [r["score"] for r in doc["runs"] if not r["variant"]] == [42.0]
    # the quick ablation "layers-all" is the main P-Tuning v2 run, so it shows in the ablation table too
    assert [r["variant"] for r in doc["runs"] if r["variant"]] == ["layers-all"]
    assert doc["pending"] == ["banking77/fine-tuning"]
    assert "42.0" in (tmp_path / "quality-quick.md").read_text()


#: A synthetic manifest: what bench.datasets writes (source package, sha256, license, labels).
FAKE_MANIFEST = {
    "dataset": "conll_sample",
    "labels": ["B-LOC", "B-PER", "O"],
    "license": "test data",
    "redistributable": False,
    "source": {"spec": "pkg==1.0", "registry": "pypi", "filename": "pkg.whl", "sha256": "0" * 64},
    "split_definition": "first 8 train, last 4 eval",
}


def _synthetic_conll(tb: C.TaskBudget) -> tuple[list, list]:
    from app.engine.data import parse_records

    rows = [
        {"tokens": [name, "visited", city], "tags": ["B-PER", "O", "B-LOC"]}
        for name, city in [("Ann", "Paris"), ("Bob", "Rome"), ("Eve", "Oslo")] * 4
    ]
    return parse_records(rows[:8], tb.task_type), parse_records(rows[8:], tb.task_type)


def test_execute_and_ship_on_a_tiny_backbone(tmp_path, monkeypatch, tiny_backbone):
    """One real (tiny) training run end to end: record fields, cached prompt, shipped file + metadata.
    Synthetic data, so it runs without the dataset cache."""
    monkeypatch.setattr(C, "CKPT_DIR", tmp_path / "ckpt")
    monkeypatch.setattr(C, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(D, "load_task_data", _synthetic_conll)
    budget = _tiny_budget()
    run = C.Run("single", "conll_sample", "p-tuning-v2", budget=budget.task("conll_sample"))
    manifests = {"conll_sample": FAKE_MANIFEST}
    rec = R.execute_single(run, run.key(budget, "tiny"), "tiny", tiny_backbone, manifests)
    for field in (
        "score",
        "metrics",
        "num_trainable",
        "trainable_fraction",
        "stored_params",
        "train_seconds",
        "steps",
        "hyperparameters",
        "checkpoint",
    ):
        assert field in rec
    assert rec["n_train"] == 8 and rec["n_eval"] == 4 and rec["steps"] == 2
    assert rec["stored_params"] <= rec["num_trainable"]
    assert (tmp_path / rec["checkpoint"]).is_file()
    # CoNLL is never shipped, even when it is the only run
    assert ship.ship([rec], budget, tiny_backbone, manifests, "cmd", store_root=tmp_path / "store") == []

    # ship a record that pretends to be BANKING77 (the shipping code path, metadata, verification)
    monkeypatch.setitem(ship.SAMPLE_INPUTS, "banking77", [{"tokens": ["EU", "rejects"]}])
    fake = {**rec, "task": "banking77"}
    bank_manifest = {**manifests["conll_sample"], "redistributable": True, "license": "CC BY 4.0"}
    monkeypatch.setattr(C, "SHIP_TASKS", {"banking77": "banking77"})
    budget2 = replace(budget, tasks={**budget.tasks, "banking77": budget.task("conll_sample")})
    shipped = ship.ship(
        [fake], budget2, tiny_backbone, {"banking77": bank_manifest}, "cmd", store_root=tmp_path / "store"
    )
    assert [s["task"] for s in shipped] == ["banking77"]
    side = json.loads((tmp_path / "store" / "banking77" / "v0001.json").read_text())
    meta = side["metadata"]
    assert meta["license"] == "CC BY 4.0" and meta["data"]["sha256"] and meta["metrics"]["eval_size"] == 4
    assert meta["command"] == "cmd" and meta["training"]["train"]["lr"] == C.METHOD_HP["p-tuning-v2"].lr


def test_a_qa_prefix_below_the_bar_is_not_shipped_and_an_old_one_goes(tmp_path):
    """SQuAD below 50 F1 is never published; a squad version shipped earlier is removed from the store."""
    old = tmp_path / "store" / "squad"
    old.mkdir(parents=True)
    (old / "v0001.safetensors").write_bytes(b"old")
    rec = {
        **_fake_record("squad", "p-tuning-v2", 49.9),
        "checkpoint": "missing.safetensors",
        "backbone": "tiny",
    }
    manifests = {"squad": {**FAKE_MANIFEST, "redistributable": True}}
    assert ship.ship([rec], C.FULL, None, manifests, "cmd", store_root=tmp_path / "store") == []
    assert not old.exists()
    assert ship.SHIP_BAR["squad"] == 50.0


# ------------------------------------------------------------------------------------ shipped tasks


REQUIRED_LICENSE = {"banking77": "CC BY 4.0", "squad": "CC BY-SA 4.0"}


def test_prompts_store_is_small_and_has_metadata():
    total = sum(p.stat().st_size for p in (REPO / "prompts_store").rglob("*") if p.is_file())
    assert total < 3.5e6
    from app.engine.checkpoint import read_metadata

    for path in SHIPPED:
        doc = read_metadata(path)
        task = path.parent.name
        assert task in C.SHIP_TASKS.values()
        assert doc["metrics"]["eval_split"] and doc["metrics"]["eval_size"] > 0
        assert doc["data"]["package"] and len(doc["data"]["sha256"]) == 64
        assert doc["license"]
        if task in REQUIRED_LICENSE:
            assert doc["license"] == REQUIRED_LICENSE[task]
        assert "conll" not in json.dumps(doc["data"]).lower()
        side = json.loads(path.with_suffix(".json").read_text())
        from app.engine.checkpoint import sha256_file

        assert side["sha256"] == sha256_file(path)


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_task_loads_and_predicts_on_minilm(path):
    from app.engine.backbone import load_backbone
    from app.engine.checkpoint import load_checkpoint
    from app.engine.predict import predict

    backbone = load_backbone()
    task = load_checkpoint(path, backbone)
    name = path.parent.name
    if name == "banking77":
        preds = predict(
            backbone, task, [{"text": "My card still hasn't arrived, how long does delivery take?"}]
        )
        assert preds[0]["label"] in task.spec.labels and preds[0]["label"] == "card_arrival"
    elif name == "brown-pos":
        preds = predict(backbone, task, [{"tokens": ["The", "jury", "said", "it", "was", "fair", "."]}])
        assert preds[0]["tags"][0] == "at" and preds[0]["tags"][1] == "nn" and preds[0]["tags"][-1] == "."
    elif name == "squad":
        ctx = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889."
        preds = predict(
            backbone, task, [{"question": "When was the Eiffel Tower completed?", "context": ctx}]
        )
        assert "1889" in preds[0]["answer"]
    else:
        pytest.fail(f"unexpected shipped task {name}")


def test_majority_class_floor(monkeypatch):
    from app.engine.tasks.classification import ClassificationExample

    ev = [ClassificationExample("x", label=lab) for lab in ("true", "true", "false")]
    monkeypatch.setattr(D, "load_task_data", lambda tb: ([], ev))
    assert D.majority_share(C.FULL.task("boolq")) == pytest.approx(200 / 3)
    assert D.majority_share(C.FULL.task("brown_pos")) is None  # not a classification task


def test_multitask_run_continues_each_task_at_a_scaled_lr(tmp_path, monkeypatch, tiny_backbone):
    """The multi-task run: a shared stage over the tasks, then a per-task stage that starts from the
    shared prefix and head at ``mt_per_task_lr_scale`` x the P-Tuning v2 LR; six records come out."""
    from app.engine import train as T
    from app.engine.data import parse_records

    monkeypatch.setattr(C, "CKPT_DIR", tmp_path / "ckpt")
    monkeypatch.setattr(C, "REPO_ROOT", tmp_path)
    words = ["good", "bad", "fine", "awful"]
    cls = [
        {"text": f"{w} movie {i}", "label": "pos" if w in ("good", "fine") else "neg"}
        for i, w in enumerate(words * 3)
    ]
    tok = [{"tokens": [w, "movie"], "tags": ["ADJ", "NOUN"]} for w in words * 2]
    data = {
        "classification": (
            parse_records(cls[:8], "classification"),
            parse_records(cls[8:], "classification"),
        ),
        "token-classification": (
            parse_records(tok[:6], "token-classification"),
            parse_records(tok[6:], "token-classification"),
        ),
    }
    monkeypatch.setattr(D, "load_task_data", lambda tb: data[tb.task_type])
    a = C.TaskBudget("a", "classification", "accuracy", "train", "test", 8, 4, 1, 4, 16, prefix_length=2)
    b = C.TaskBudget(
        "b", "token-classification", "token_accuracy", "train", "test", 6, 2, 1, 4, 16, prefix_length=2
    )
    budget = C.Budget(
        name="tiny", tasks={"a": a, "b": b}, mt_epochs=1, mt_batch_size=4, mt_per_task_lr_scale=0.25
    )
    lrs: list[float] = []
    real = T.train_task

    def spy(backbone, spec, train, ev, config, **kw):
        lrs.append(config.lr)
        assert kw.get("init_kv") is not None  # continues from the shared stage
        return real(backbone, spec, train, ev, config, **kw)

    monkeypatch.setattr(T, "train_task", spy)
    run = C.Run("multitask", "a+b", C.MULTITASK)
    doc = R.execute_multitask(run, run.key(budget, "tiny"), budget, tiny_backbone, {})
    assert lrs == [C.METHOD_HP["p-tuning-v2"].lr * 0.25] * 2
    recs = R.expand(doc)
    assert [(r["task"], r["method"]) for r in recs] == [
        ("a", "mpt-shared"),
        ("a", "mpt-per-task"),
        ("b", "mpt-shared"),
        ("b", "mpt-per-task"),
    ]
    assert all(r["hyperparameters"] for r in recs)
    # the scale is part of the run's identity: changing it re-runs the multi-task run
    assert run.key(budget, "tiny") != run.key(replace(budget, mt_per_task_lr_scale=1.0), "tiny")


@pytest.mark.parametrize("budget", list(C.BUDGETS.values()), ids=list(C.BUDGETS))
def test_every_planned_run_is_found_in_the_committed_cache(budget):
    """Run keys are file names of bench/results/runs: a refactor that changes one loses the run."""
    runs = C.plan_runs(budget, list(C.TASK_ORDER), list(C.ALL_METHODS), list(C.ABLATIONS))
    missing = [r.label for r in runs if R.load_for_table(C.DEFAULT_OUT, r, budget, "minilm") is None]
    assert missing == []


def test_the_figure_draws_each_method_against_its_stored_parameters(tmp_path):
    """quality.svg: a panel per (backbone, task) with a fine-tuning run, one marker per method (a
    tooltip naming its score and stored parameters), a run from before the optimizer fix hollow;
    the ablations and tasks outside the figure are not drawn. write_results writes it and links it."""
    import xml.etree.ElementTree as ET

    from bench.quality import figure

    def rec(task, method, score, stored, **kw):
        return {**_fake_record(task, method, score), "stored_params": stored, **kw}

    recs = [
        rec("banking77", "fine-tuning", 86.2, 22_595_021),
        rec("banking77", "p-tuning-v2", 87.0, 103_373),
        rec("banking77", "lora", 87.4, 103_373),
        rec("banking77", "p-tuning-v2", 75.0, 103_373, variant="layers-all"),
        rec("brown_pos", "fine-tuning", 93.1, 22_635_061),
        rec("brown_pos", "prompt-tuning", 91.5, 94_261, optimizer_legacy=True),
        rec("boolq", "fine-tuning", 61.7, 22_566_146),
        rec("boolq", "p-tuning-v2", 60.8, 74_498),
        rec("banking77", "p-tuning-v2", 89.8, 354_125, backbone="mpnet-x"),  # no fine-tuning: no panel
        _fake_record("brown_pos", "lora", 92.0),  # no stored parameter count: not drawn
    ]
    names = {"mpnet-x": "MPNet", report.PRIMARY_BACKBONE: "primary"}
    svg = figure.render_svg(report.by_backbone(recs), names)  # no "backbone": the primary
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in root.iter(f"{ns}text")]
    assert "BANKING77 (accuracy), primary" in titles and "Brown POS (token accuracy), primary" in titles
    assert not any("MPNet" in (t or "") for t in titles) and not any(
        "boolq" in (t or "").lower() for t in titles
    )
    tips = [t.text for t in root.iter(f"{ns}title")]
    assert sorted(tips) == sorted(
        [
            "Fine-tuning: 86.20, 22,595,021 parameters stored",
            "P-Tuning v2: 87.00, 103,373 parameters stored",
            "LoRA: 87.40, 103,373 parameters stored",
            "Fine-tuning: 93.10, 22,635,061 parameters stored",
            "Prompt tuning (shallow): 91.50, 94,261 parameters stored",
        ]
    )
    markers = [(g.find(f"{ns}title").text, list(g)[1]) for g in root.iter(f"{ns}g")]
    hollow = [tip for tip, m in markers if m.get("fill") == "white"]
    assert hollow == ["Prompt tuning (shallow): 91.50, 94,261 parameters stored"] and "hollow marker" in svg
    # PT2 and LoRA store the same count: drawn side by side, not on top of each other
    by = {tip.split(":")[0]: m for tip, m in markers if "103,373" in tip}
    pt2_x = float(by["P-Tuning v2"].get("cx"))
    lora_x = float(by["LoRA"].get("points").split()[0].split(",")[0])  # the diamond's top point
    assert abs(pt2_x - lora_x) >= 9.0
    meta = {"command": "c", "backbone": "x", "backbone_params": 1e6, "threads": 1, "generated_at": "now"}
    assert figure.render_svg(report.by_backbone([recs[1]]), names) is None  # no fine-tuning run: no figure
    report.write_results(tmp_path, C.FULL, recs[:3], meta, [])
    assert (tmp_path / "quality.svg").read_text().startswith("<svg")
    assert (
        "![quality: score against parameters stored per task](quality.svg)"
        in (tmp_path / "quality.md").read_text()
    )


def test_a_run_from_before_the_optimizer_fix_is_shown_marked_until_rerun(tmp_path):
    """The optimizer fix re-keys every method but LoRA; a run cached under its old key fills its
    cell marked †, and the run at its new key replaces it."""
    ft, lora = C.plan_runs(C.FULL, ["banking77"], ["fine-tuning", "lora"], [])
    assert ft.legacy_key(C.FULL, "minilm") != ft.key(C.FULL, "minilm")
    assert lora.legacy_key(C.FULL, "minilm") is None  # adapters and head share one lr and decay
    old = ft.legacy_key(C.FULL, "minilm")
    R.store_cached(tmp_path, old, {**_fake_record("banking77", "fine-tuning", 80.0, frac=1.0), "key": old})
    doc = R.load_for_table(tmp_path, ft, C.FULL, "minilm")
    assert doc["optimizer_legacy"] is True
    meta = {"command": "c", "backbone": "x", "backbone_params": 1e6, "threads": 1, "generated_at": "now"}
    md = report.render_markdown([doc], C.FULL, meta)
    assert "| 80.0 † |" in md and "† trained before the optimizer fix" in md
    new = ft.key(C.FULL, "minilm")
    R.store_cached(tmp_path, new, {**_fake_record("banking77", "fine-tuning", 85.0, frac=1.0), "key": new})
    doc = R.load_for_table(tmp_path, ft, C.FULL, "minilm")
    assert doc["score"] == 85.0 and "optimizer_legacy" not in doc
    assert "†" not in report.render_markdown([doc], C.FULL, meta)


def test_runs_are_mapped_by_the_engine_options_table():
    from app.engine.options import build_training

    tb = C.BUDGETS["full"].task("banking77")
    hp = C.METHOD_HP["fine-tuning"]
    spec, config = R.training_for(tb, hp, ["a", "b"])
    flat = C.run_hyperparameters(tb, hp, ["a", "b"])
    assert (spec, config) == build_training(tb.task_type, {**flat, "holdout_fraction": 0.0}, ["a", "b"])
    assert (config.lr, config.backbone_lr) == (hp.lr, hp.backbone_lr)  # its own encoder LR is kept
    assert config.early_stopping_patience == 0 and spec.method == "fine-tuning"


def _synthetic_conll_n(n_train: int):
    """Like _synthetic_conll, with ``n_train`` training sentences (enough for a held-out split)."""

    def load(tb: C.TaskBudget) -> tuple[list, list]:
        from app.engine.data import parse_records

        rows = [
            {"tokens": [name, "visited", city], "tags": ["B-PER", "O", "B-LOC"]}
            for name, city in [("Ann", "Paris"), ("Bob", "Rome"), ("Eve", "Oslo")] * (n_train // 3 + 2)
        ]
        return parse_records(rows[:n_train], tb.task_type), parse_records(
            rows[n_train : n_train + 4], tb.task_type
        )

    return load


def test_defaults_run_trains_as_post_train_does(tmp_path, monkeypatch, tiny_backbone):
    """The "defaults" method is P-Tuning v2 with no hyperparameters given: the product's
    per-task-type defaults read from app.engine.options (not copies), its epoch cap, early stopping
    and held-out 10% of the training subset, then the refit on all of it; scored on the same eval
    set as the other methods."""
    from app.engine.options import TASK_DEFAULTS, build_training

    monkeypatch.setattr(C, "CKPT_DIR", tmp_path / "ckpt")
    monkeypatch.setattr(C, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(D, "load_task_data", _synthetic_conll_n(30))
    budget = _tiny_budget()
    tb = budget.task("conll_sample")
    run = C.Run("single", "conll_sample", C.PRODUCT_DEFAULTS, budget=tb)
    labels = FAKE_MANIFEST["labels"]
    assert R.product_training(tb.task_type, labels) == build_training(tb.task_type, {}, labels)
    rec = R.execute_single(
        run, run.key(budget, "tiny"), "tiny", tiny_backbone, {"conll_sample": FAKE_MANIFEST}
    )
    want = TASK_DEFAULTS["token-classification"]
    spec, train = rec["hyperparameters"]["spec"], rec["hyperparameters"]["train"]
    assert spec["method"] == "p-tuning-v2" and spec["prefix_length"] == want["prefix_length"]
    assert (train["lr"], train["batch_size"]) == (want["lr"], want["batch_size"])
    _, product = build_training(tb.task_type, {}, labels)
    assert train["epochs"] == product.epochs and train["holdout_fraction"] == product.holdout_fraction > 0
    assert train["early_stopping_patience"] == product.early_stopping_patience > 0
    # 3 of the 30 training sentences held out for early stopping; the bench's eval set is scored
    assert rec["n_train"] == 30 and rec["n_holdout"] == 3 and rec["n_eval"] == 4
    assert 1 <= rec["best_epoch"] <= rec["epochs_run"] <= product.epochs
    # then the refit on all 30 for the epochs run: 27 sentences at batch 8, then 30
    n = rec["epochs_run"]
    assert rec["refit"] == {"epochs": n, "examples": 30, "held_out": 3}
    assert rec["steps"] == n * 4 + n * 4
    assert [c["epoch"] for c in rec["curve"]] == list(range(1, n + 1)) * 2
    assert all(("held_out" in c) != c.get("refit", False) for c in rec["curve"])
    # the product's max_length (128) is not the budget's (32): also scored at the budget's
    short = rec["at_budget_max_length"]
    assert spec["max_length"] == 128 and short["max_length"] == tb.max_length == 32
    assert 0 <= short["score"] <= 100
    # the product's defaults are part of the run's identity: changing one re-runs the column
    key = run.key(budget, "tiny")
    monkeypatch.setitem(TASK_DEFAULTS["token-classification"], "lr", want["lr"] / 3)
    assert run.key(budget, "tiny") != key


def test_lora_run_trains_adapters_and_head_only(tmp_path, monkeypatch, tiny_backbone):
    """LoRA (peft): rank-8 adapters on query/value of a copy of the encoder plus the head train; the
    shared backbone and the copy's own weights do not change; stored = adapters + head."""
    import torch

    monkeypatch.setattr(C, "CKPT_DIR", tmp_path / "ckpt")
    monkeypatch.setattr(C, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(D, "load_task_data", _synthetic_conll)
    budget = _tiny_budget()
    run = C.Run("single", "conll_sample", C.LORA, budget=budget.task("conll_sample"))
    hp = C.METHOD_HP[C.LORA]
    assert (hp.lora_rank, hp.lora_alpha, hp.lora_dropout, hp.lora_targets) == (8, 16, 0.1, ("query", "value"))
    before = {n: p.detach().clone() for n, p in tiny_backbone.model.named_parameters()}
    seen = {}
    real_prepare = R.lora_prepare

    def spy(h):
        inner = real_prepare(h)

        def prepare(model):
            inner(model)
            seen["model"] = model

        return prepare

    monkeypatch.setattr(R, "lora_prepare", spy)
    rec = R.execute_single(
        run, run.key(budget, "tiny"), "tiny", tiny_backbone, {"conll_sample": FAKE_MANIFEST}
    )
    model = seen["model"]
    cfg = tiny_backbone.model.config
    adapters = cfg.num_hidden_layers * 2 * hp.lora_rank * (cfg.hidden_size + cfg.hidden_size)
    head = sum(p.numel() for p in model.head.parameters())
    assert rec["num_trainable"] == adapters + head == rec["stored_params"]
    assert rec["lora"] == {"rank": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "value"]}
    assert rec["checkpoint"] is None and rec["steps"] == 2
    trained = {n for n, p in model.finetuned.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    copy = dict(model.finetuned.model.named_parameters())
    for n, p in tiny_backbone.model.named_parameters():  # frozen: the shared one and the copy's base
        assert torch.equal(p, before[n])
        base = n.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(copy.get(n, copy.get(base)), before[n]), n
    # the adapters moved (lora_B starts at zero)
    assert any(p.abs().sum() > 0 for n, p in copy.items() if "lora_B" in n)


def test_running_some_methods_keeps_the_other_cached_rows(tmp_path, monkeypatch, tiny_backbone):
    """The tables show every cached run of the budget's plan, not only the invocation's: running the
    new columns alone (or --report-only on some tasks) never drops the other rows."""
    monkeypatch.setattr(D, "prepare_datasets", lambda names: {})
    import app.engine.backbone as B

    monkeypatch.setattr(B, "load_backbone", lambda name=None, device="cpu": tiny_backbone)
    for task, method, score in [("banking77", "fine-tuning", 50.0), ("boolq", "p-tuning-v2", 60.0)]:
        r = next(r for r in C.plan_runs(C.QUICK, [task], [method], []))
        key = r.key(C.QUICK, "minilm")
        R.store_cached(tmp_path, key, {**_fake_record(task, method, score), "key": key})
    new = C.plan_runs(C.QUICK, ["banking77"], ["p-tuning-v2"], [])[0]
    key = new.key(C.QUICK, "minilm")

    def fake_execute(run, k, *a, **kw):
        return {**_fake_record("banking77", "p-tuning-v2", 42.0), "key": k}

    monkeypatch.setattr(R, "execute_single", fake_execute)
    args = ["--quick", "--tasks", "banking77", "--methods", "p-tuning-v2", "--ablations", "none"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "quality-quick.json").read_text())
    assert sorted(r["score"] for r in doc["runs"] if not r["variant"]) == [42.0, 50.0, 60.0]
    assert R.load_cached(tmp_path, key)["score"] == 42.0
    assert doc["pending"] == []


def test_markdown_defaults_and_lora_columns():
    recs = [
        _fake_record("banking77", "fine-tuning", 90.0, frac=1.0),
        _fake_record("banking77", "p-tuning-v2", 89.5),
        _fake_record("banking77", "defaults", 87.0),
        _fake_record("banking77", "lora", 90.5, frac=0.01),
    ]
    meta = {"command": "c", "backbone": "x", "backbone_params": 1e6, "threads": 1, "generated_at": "now"}
    md = report.render_markdown(recs, C.FULL, meta)
    header = next(line for line in md.splitlines() if line.startswith("| task (metric"))
    assert "P-Tuning v2, defaults" in header and "| LoRA |" in header and "defaults − FT" in header
    bank = next(line for line in md.splitlines() if line.startswith("| banking77 ("))
    assert bank.endswith("| -3.0 | +0.5 |")
    recs[2]["at_budget_max_length"] = {"max_length": 64, "score": 86.0}
    md = report.render_markdown(recs, C.FULL, meta)
    assert "| 87.0 (86.0 at 64 tokens) |" in md
    assert "| defaults (classification) | 0.03 |" in md and "LoRA rank 8 on query, value" in md


MPNET_FT = {("mpnet", "fine-tuning"): replace(C.METHOD_HP["fine-tuning"], backbone_lr=3e-5)}


def test_another_backbones_runs_get_rows_of_their_own(tmp_path, monkeypatch, tiny_backbone):
    """Runs of ``--backbone mpnet`` and MiniLM's share one table: each task's MiniLM row, then its
    MPNet-base row with its own gap; a --report-only on either backbone keeps both; a backbone's
    own method LR is listed."""
    monkeypatch.setattr(C, "BACKBONE_METHOD_HP", MPNET_FT)
    monkeypatch.setattr(D, "prepare_datasets", lambda names: {})
    import app.engine.backbone as B

    monkeypatch.setattr(B, "load_backbone", lambda name=None, device="cpu": tiny_backbone)
    cached = [
        ("minilm", "all-MiniLM-L6-v2", "fine-tuning", 86.0, 1.0),
        ("minilm", "all-MiniLM-L6-v2", "p-tuning-v2", 86.5, 0.005),
        ("mpnet", "all-mpnet-base-v2", "fine-tuning", 90.0, 1.0),
        ("mpnet", "all-mpnet-base-v2", "p-tuning-v2", 88.0, 0.002),
    ]
    for alias, name, method, score, frac in cached:
        r = C.plan_runs(C.QUICK, ["banking77"], [method], [], alias)[0]
        key = r.key(C.QUICK, alias)
        rec = {**_fake_record("banking77", method, score, frac=frac), "key": key, "backbone": name}
        R.store_cached(tmp_path, key, {**rec, "backbone_params": 110e6 if alias == "mpnet" else 22e6})
    for alias in ("minilm", "mpnet"):
        args = ["--quick", "--tasks", "banking77", "--ablations", "none", "--backbone", alias]
        assert cli.main([*args, "--report-only", "--out", str(tmp_path)]) == 0
        lines = (tmp_path / "quality-quick.md").read_text().splitlines()
        rows = [line for line in lines if line.startswith("| banking77")]
        main = [line for line in rows if "accuracy, test" in line]
        assert [line.split(" (")[0] for line in main] == ["| banking77", "| banking77, MPNet-base"]
        assert "| +0.5 | yes |" in main[0] and "| -2.0 | no (1.0 short) |" in main[1]
        assert any(line.startswith("| banking77, MPNet-base | p-tuning-v2 |") for line in rows)  # runs table
        assert any("all-mpnet-base-v2 (110.0M parameters) in the rows marked MPNet-base" in x for x in lines)
        assert any(x.startswith("| fine-tuning on MPNet-base | 0.001 | 3e-05 |") for x in lines)


def test_a_backbone_exception_keys_only_that_backbones_runs(monkeypatch):
    """A backbone's own method LR applies to that backbone's runs; MiniLM's runs (and their keys)
    are unchanged."""
    monkeypatch.setattr(C, "BACKBONE_METHOD_HP", MPNET_FT)
    mini = C.plan_runs(C.FULL, ["banking77"], ["fine-tuning", "p-tuning-v2"], [])
    mp = C.plan_runs(C.FULL, ["banking77"], ["fine-tuning", "p-tuning-v2"], [], "mpnet")
    assert [r.method_hp.backbone_lr for r in mini if r.method == "fine-tuning"] == [1e-4]
    assert [r.method_hp.backbone_lr for r in mp if r.method == "fine-tuning"] == [3e-5]
    assert [r.hp for r in mini] == [None, None]
    assert [r.key(C.FULL, "mpnet") for r in mp if r.method == "p-tuning-v2"] == [
        r.key(C.FULL, "mpnet") for r in mini if r.method == "p-tuning-v2"
    ]
    brown = C.plan_runs(C.FULL, ["brown_pos"], ["p-tuning-v2"], [], "mpnet")[0]
    assert brown.method_hp.prefix_length == 64  # the task's own exception still applies
