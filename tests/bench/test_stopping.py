"""The stopping-rule sweep (`python -m bench.quality.stopping`): each variant trains as POST /train
does with its one change, the refit variant records the refit, and the table reads the records."""

from __future__ import annotations

from bench.quality import stopping as S
from tests.engine.test_train import sentiment


def test_variants_train_as_the_product_with_their_change_and_the_table_reads_them(tiny_backbone, monkeypatch):
    monkeypatch.setitem(
        S.SETS, "toy", S.StopSet("toy", "classification", "accuracy", "train", "dev", None, None, 0)
    )
    data = (sentiment(60, 0), sentiment(20, 1))
    fast = {"epochs": 2, "batch_size": 16}
    monkeypatch.setattr(S, "VARIANTS", {k: {**v, **fast} for k, v in S.VARIANTS.items()})
    plain = S.run_one(tiny_backbone, "toy", "no-refit", data)
    refit = S.run_one(tiny_backbone, "toy", "refit", data)
    assert plain["epochs_run"] == refit["epochs_run"] == 2 and len(plain["held_out_curve"]) == 2
    assert "refit_epochs" not in plain and refit["refit_epochs"] == 2
    assert plain["n_train"] == 60 and plain["n_eval"] == 20 and 0 <= refit["score"] <= 100
    md = S.report([plain, refit])
    assert "| no-refit | " in md and "; refit 2)" in md and "toy: 60 train, 20 scored" in md
