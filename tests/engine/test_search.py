"""Built-in search from the command line: `prompthub train --search N` keeps the best of N trials
and records the search log; its arguments are checked before any backbone is loaded."""

from __future__ import annotations

import json

import pytest

from app.engine.checkpoint import read_metadata
from app.engine.model import SpecError
from app.engine.search import MAX_TRIALS, check_search
from tests.engine.test_train import sentiment


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, None), "search.trials"),
        ((MAX_TRIALS + 1, None), "search.trials"),
        ((True, None), "search.trials"),
        ((3, "token_accuracy"), "search.metric"),
        ((3, None, 0), "search.timeout_s"),
    ],
)
def test_bad_searches_name_the_field(args, field):
    with pytest.raises(SpecError) as e:
        check_search("classification", *args)
    assert e.value.field == field
    check_search("token-classification", 3, "f1", 60)  # a good one passes


def test_cli_search_keeps_the_best_trial_with_its_log(tiny_backbone, tmp_path, capsys):
    from app.cli import main

    bb_dir = tmp_path / "tiny"
    tiny_backbone.model.save_pretrained(bb_dir)
    tiny_backbone.tokenizer.save_pretrained(bb_dir)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in sentiment(40, 0)))
    argv = ["train", "--task-type", "classification", "--train", str(train), "--out", str(tmp_path / "out")]
    argv += ["--backbone", str(bb_dir), "--epochs", "2", "--batch-size", "16", "--no-progress"]
    assert main([*argv, "--search", "2", "--search-metric", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main([*argv, "--search", "2", "--search-metric", "macro_f1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["search"]["metric"] == "macro_f1" and summary["search"]["best_trial"] in (1, 2)
    meta = read_metadata(tmp_path / "out" / "checkpoint.safetensors")
    log = meta["search"]
    assert len(log["log"]) == 2 and log["held_out"] == 4  # 10% of 40 held out, shared by the trials
    assert meta["spec"]["prefix_length"] == log["best_params"]["prefix_length"]


def test_a_resumed_search_equals_an_uninterrupted_one(tiny_backbone, tmp_path):
    """A search stopped inside its second trial and resumed from its state: finished trials are not
    run again, the stopped trial goes on from its own training state, and the trials, scores and
    the best version are those of a search that was never interrupted."""
    import torch

    from app.engine.model import TaskSpec
    from app.engine.search import run_search
    from app.engine.search_state import SearchState
    from app.engine.train_config import Cancelled, TrainConfig

    data = (sentiment(40, 0), None)
    cfg = TrainConfig(epochs=2, lr=3e-2, batch_size=16, seed=3, early_stopping_patience=0)

    def search(**kw):
        return run_search(tiny_backbone, TaskSpec("classification"), *data, cfg, trials=3, **kw)

    full = search()
    calls: list[int] = []

    def stop() -> bool:  # trial 1 asks 7 times (6 steps): the 9th ask is inside trial 2
        calls.append(1)
        return len(calls) > 8

    state = SearchState(tmp_path / "job.search", every_s=0)
    with pytest.raises(Cancelled):
        search(should_stop=stop, state=state)
    saved = json.loads(state.doc_path.read_text())
    assert len(saved["trials"]) == 1 and saved["running"]["number"] == 1
    assert (tmp_path / "job.search" / "trial-1.state").is_file()

    seen = []
    state2 = SearchState(tmp_path / "job.search", every_s=0)
    resumed = search(state=state2, progress=seen.append)
    assert state2.resumed_trials == 1
    assert seen[0].message == "search resumed after 1 of 3 trials"
    # trial 2 went on from its own saved state
    assert any(p.message.startswith("search trial 2/3: resumed from step") for p in seen)
    for key in ("best_trial", "best_value", "best_params", "log"):
        assert resumed.log[key] == full.log[key], key
    assert torch.equal(resumed.best.task.kv, full.best.task.kv)
    assert resumed.best.metrics == full.best.metrics
