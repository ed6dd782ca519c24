"""Issue 12, item 10: long texts are cut before they are tokenised whole (same features), and the
prediction work one key may have in flight is bounded before any of it is done (429 beyond)."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from app.engine.predict import encode_examples, prepare
from app.engine.tasks.common import clip_text
from tests.helpers import make_serving_task

WORDS = ["the", "film", "was", "unbelievably", "good", "!", "naïve", "café", "42", "x-ray", "don't", "日本"]


def _text(rng: random.Random, n_words: int) -> str:
    seps = [" ", " ", " ", "\n", "  ", "\t"]
    return "".join(rng.choice(WORDS) + rng.choice(seps) for _ in range(n_words)).strip()


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_clipped_inputs_give_the_features_of_whole_inputs(tiny_backbone, task_type):
    tok = tiny_backbone.tokenizer
    task = make_serving_task(tiny_backbone, task_type, max_length=64)
    rng = random.Random(7)
    records = []
    for _ in range(60):
        rec = {"text": _text(rng, rng.choice([3, 40, 300, 3000]))}
        if rng.random() < 0.5:
            rec["text_pair"] = _text(rng, rng.choice([2, 50, 400, 2500]))
        records.append(rec)
    records.append({"text": "a" * 5000 + " b" * 3000})  # one long word, then many short ones
    records.append({"text": ("x" * 150 + " ") * 100})  # words longer than WordPiece takes: [UNK]s
    records.append({"text": "word " + " " * 15000 + "end"})  # mostly whitespace: nothing to cut
    got = prepare(task, tok, records).features
    from app.engine import data as D

    whole = encode_examples(
        task.spec,
        tok,
        D.parse_records(records, task_type, require_labels=False),
        with_labels=False,
        max_length=64,
    )
    exact = 0
    for rec, g, w in zip(records, got, whole, strict=True):
        both_long = rec.get("text_pair") and all(
            len(tok(rec[k], add_special_tokens=False)["input_ids"]) > 64 for k in ("text", "text_pair")
        )
        if both_long:  # both sides cut to half: which one gets the odd token may differ
            assert len(g["input_ids"]) == len(w["input_ids"]) == 64
            continue
        assert g["input_ids"] == w["input_ids"], rec
        assert g["token_type_ids"] == w["token_type_ids"], rec
        exact += 1
    assert exact >= 40


def test_a_long_text_is_not_tokenised_whole(tiny_backbone):
    tok = tiny_backbone.tokenizer
    seen: list[int] = []

    class Spy:
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, text, *args, **kw):
            for t in (
                [text, *args[:1]]
                if not isinstance(text, list)
                else [*text, *(args[0] if args and args[0] else [])]
            ):
                if isinstance(t, str):
                    seen.append(len(t))
            return tok(text, *args, **kw)

    task = make_serving_task(tiny_backbone, "classification", max_length=64)
    text = "many words in a long text " * 770  # 20,020 characters
    prepare(task, Spy(), [{"text": text}])
    assert seen and max(seen) <= 64 * 8 * 2, seen
    assert len(clip_text(tok, text, 64)) < 1100


def test_admission_per_key_and_global():
    from app.serving.admission import Admission, Overloaded
    from app.serving.batcher import QueueFull

    adm = Admission(per_key_chars=1000, total_chars=2500)
    a = adm.acquire("flood", 900)
    with pytest.raises(Overloaded, match="for this API key") as info:
        adm.acquire("flood", 200)
    assert isinstance(info.value, QueueFull) and info.value.retry_after_s >= 1
    big = adm.acquire("other", 1500)  # a key with nothing in flight is admitted (within the total)
    with pytest.raises(Overloaded, match="on this server"):
        adm.acquire("third", 200)
    a.release()
    a.release()  # idempotent
    assert adm.held("flood") == 0 and adm.held() == 1500
    big.release()
    assert adm.held() == 0 and adm.stats().refused == 2


def test_a_flooding_key_gets_429_while_another_key_is_served(hub_factory, settings_factory):
    """Key "flood" has 20,000 characters in flight (held in a stuck forward); its next request is
    refused at once with QueueFull (429) before any tokenising, while key "good" is admitted."""
    from app.serving.batcher import QueueFull
    from tests.helpers import publish_task

    settings = settings_factory(max_inflight_chars_per_key=30_000)
    hub = hub_factory(settings)
    hub.start()
    publish_task(settings, hub.backbone, "sent")
    release = threading.Event()
    real = hub.batcher._forward

    def slow(*args, **kw):
        release.wait(20)
        return real(*args, **kw)

    hub.batcher._forward = slow
    long_inputs = ["long words " * 1800]  # 19,800 characters

    async def scenario():
        held = asyncio.create_task(hub.predict("sent", long_inputs, client="flood"))
        for _ in range(200):
            if hub.admission.held("flood"):
                break
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="for this API key"):
            await hub.predict("sent", long_inputs, client="flood")
        good = asyncio.create_task(hub.predict("sent", ["short"], client="good"))
        await asyncio.sleep(0.05)
        release.set()
        return await held, await good

    (_, p1), (_, p2) = asyncio.run(scenario())
    assert len(p1) == 1 and len(p2) == 1
    assert hub.admission.held() == 0
