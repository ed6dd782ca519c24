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
