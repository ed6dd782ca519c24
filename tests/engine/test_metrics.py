from __future__ import annotations

import pytest

from app.engine.metrics import (
    accuracy,
    compute_metrics,
    entity_f1,
    macro_f1,
    mse,
    normalize_answer,
    pearson,
    spearman,
    squad_em_f1,
    token_accuracy,
)


def test_accuracy():
    assert accuracy(["a", "b", "a", "c"], ["a", "b", "b", "c"]) == 0.75
    assert accuracy([], []) == 0.0
    assert isinstance(accuracy([1], [1]), float)
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_macro_f1_by_hand():
    golds = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", "b"]
    # a: P=1, R=1/2 -> 2/3; b: P=1/3, R=1 -> 1/2; c: 0
    assert macro_f1(preds, golds) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert macro_f1(preds, golds, labels=["a", "b"]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # a label only predicted still counts (union of golds and preds)
    assert macro_f1(["a", "d"], ["a", "a"]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(["x", "y"], ["x", "y"]) == 1.0
    assert macro_f1([], []) == 0.0


def test_entity_f1_seqeval_readme_case():
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert entity_f1(pred, gold) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "B-MISC", "B-MISC"]]
    # gold entities: PER(0-1) LOC(3) | ORG(0) MISC(2-3)              -> 4
    # pred entities: PER(0-1) ORG(3) | ORG(0) (stray I-) MISC(2) MISC(3) -> 5
    # correct: PER(0-1), ORG(0)                                       -> 2
    scores = entity_f1(pred, gold)
    assert scores["precision"] == pytest.approx(2 / 5)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    # non-strict: I- starting an entity still matches a gold B- entity with the same span
    assert entity_f1([["I-LOC", "I-LOC", "O", "I-PER"]], [["B-LOC", "I-LOC", "O", "B-PER"]])["f1"] == 1.0
    # IOBES
    assert entity_f1([["B-LOC", "E-LOC", "S-PER"]], [["B-LOC", "E-LOC", "S-PER"]])["f1"] == 1.0
    assert entity_f1([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError):
        entity_f1([["O"]], [["O", "O"]])


def test_token_accuracy_ignores_none():
    assert token_accuracy([["A", "B", "C"], ["A"]], [["A", None, "D"], ["A"]]) == pytest.approx(2 / 3)
    assert token_accuracy([["A"]], [[None]]) == 0.0


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The  Quick, brown-fox!", "quick brownfox"),
        ("An apple a day", "apple day"),
        ("theater", "theater"),
        ("  Paris.\n", "paris"),
        ("A", ""),
    ],
)
def test_squad_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_squad_em_f1_by_hand():
    predictions = {"q1": "the Eiffel Tower", "q2": "in Paris, France", "q3": "1990", "extra": "x"}
    references = {"q1": ["Eiffel tower", "tower"], "q2": ["Paris"], "q3": ["1989", "1990s"], "q4": ["x"]}
    # q1: EM 1, F1 1; q2: EM 0, F1 = 2*(1/3*1)/(1/3+1) = 0.5; q3: 0, 0; q4 unanswered: 0, 0
    scores = squad_em_f1(predictions, references)
    assert scores["exact_match"] == pytest.approx(25.0)
    assert scores["f1"] == pytest.approx(37.5)
    # partial overlap with repeated tokens: pred "a b b c", gold "b c c" -> common {b:1, c:1}
    # P = 2/4, R = 2/3 -> F1 = 4/7
    assert squad_em_f1({"q": "x y y z"}, {"q": ["y z z"]})["f1"] == pytest.approx(100 * 4 / 7)
    # no-answer references (SQuAD 2.0 style)
    assert squad_em_f1({"q": ""}, {"q": []}) == {"exact_match": 100.0, "f1": 100.0}
    assert squad_em_f1({"q": "something"}, {"q": []}) == {"exact_match": 0.0, "f1": 0.0}
    assert squad_em_f1({}, {}) == {"exact_match": 0.0, "f1": 0.0}


def test_compute_metrics():
    assert compute_metrics("classification", ["a", "b"], ["a", "a"]) == {
        "accuracy": 0.5,
        "macro_f1": pytest.approx((2 / 3 + 0) / 2),
    }
    out = compute_metrics("token-classification", [["B-X", "O"]], [["B-X", "O"]])
    assert out == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "token_accuracy": 1.0}
    assert compute_metrics("question-answering", {"a": "x"}, {"a": ["x"]}) == {
        "exact_match": 100.0,
        "f1": 100.0,
    }
    assert compute_metrics("regression", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == {
        "pearson": pytest.approx(1.0),
        "spearman": pytest.approx(1.0),
        "mse": 0.0,
    }
    with pytest.raises(ValueError, match="expected one of"):
        compute_metrics("multiple-choice", [], [])


def test_pearson_spearman_mse_by_hand():
    # x = [1, 2, 3, 4], y = [2, 4, 5, 4]: sum dx*dy = 3.5, sum dx^2 = 5, sum dy^2 = 4.75
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    assert pearson(x, y) == pytest.approx(3.5 / (5.0 * 4.75) ** 0.5)
    # ranks of y with the tie averaged: [1, 2.5, 4, 2.5]; Pearson of [1, 2, 3, 4] with them
    assert spearman(x, y) == pytest.approx(pearson([1, 2, 3, 4], [1, 2.5, 4, 2.5]))
    assert spearman([1, 5, 9], [10, 20, 1000]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert mse(x, y) == pytest.approx((1 + 4 + 4 + 0) / 4)
    # undefined correlations are 0.0, never NaN (best-epoch selection compares them)
    assert pearson([1.0, 1.0], [1.0, 2.0]) == 0.0 and pearson([1.0], [2.0]) == 0.0
    assert spearman([], []) == 0.0 and mse([], []) == 0.0
    for f in (pearson, spearman, mse):
        assert isinstance(f(x, y), float)
        with pytest.raises(ValueError):
            f([1.0], [1.0, 2.0])
