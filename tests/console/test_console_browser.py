"""The console's whole story in a real browser on a real server (uvicorn subprocess on loopback,
embedded worker, the real MiniLM backbone): a bad file shows the API's error with its line and
field; upload a small file, see its preview, train, watch the loss curve and the eval metric
appear, try an input, train a second version, compare both side by side, roll back, promote,
look at the hub overview and the API docs, all without a request leaving 127.0.0.1.

Screenshots of each page go to the test's tmp folder (`screens/`); with
PROMPTHUB_UPDATE_SCREENSHOTS=1 they are also copied to docs/console/ for the README."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.console.browser import goto, loopback_only, rendered
from tests.helpers import minilm_server_settings, start_server, stop_server, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
DOCS_SHOTS = REPO / "docs" / "console"
READY_TIMEOUT_MS = 240_000
JOB_TIMEOUT_MS = 300_000

RECORDS = [
    {"text": t, "label": lab}
    for t, lab in [
        ("I loved this movie, wonderful acting", "pos"),
        ("a great and touching story", "pos"),
        ("brilliant, funny and warm", "pos"),
        ("one of the best films this year", "pos"),
        ("a delightful evening, superb cast", "pos"),
        ("beautifully shot and moving", "pos"),
        ("terrible plot and bad acting", "neg"),
        ("boring, I fell asleep", "neg"),
        ("an awful waste of time", "neg"),
        ("the worst film I have seen", "neg"),
        ("dull, slow and far too long", "neg"),
        ("clumsy writing and a weak ending", "neg"),
        ("a joyful, charming comedy", "pos"),
        ("the music and the acting are excellent", "pos"),
        ("I would happily watch it again", "pos"),
        ("a clever script with real heart", "pos"),
        ("stunning and unforgettable", "pos"),
        ("a warm film that made me smile", "pos"),
        ("a mess from start to finish", "neg"),
        ("painful to sit through", "neg"),
        ("flat characters and silly dialogue", "neg"),
        ("I regret buying a ticket", "neg"),
        ("tedious and predictable", "neg"),
        ("a lazy, forgettable sequel", "neg"),
    ]
]


@pytest.fixture
def server(tmp_path: Path):
    yield from _serve(tmp_path)


@pytest.fixture
def shipped_server(tmp_path: Path):
    """A server with the shipped tasks (banking77, brown-pos) in its store."""
    shutil.copytree(REPO / "prompts_store", tmp_path / "store")
    yield from _serve(tmp_path)


def _serve(tmp_path: Path):
    settings = minilm_server_settings(tmp_path)
    log = tmp_path / "server.log"
    proc = start_server(settings, log, worker=True)
    base = f"http://127.0.0.1:{settings.port}"
    try:
        wait_ready(base, proc, log, timeout=READY_TIMEOUT_MS / 1000)
        yield base, log
    finally:
        stop_server(proc, timeout=30)


def _shot(page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _publish_shots(shots: Path) -> None:
    """With PROMPTHUB_UPDATE_SCREENSHOTS=1, copy the screenshots to docs/console/ for the README."""
    if os.environ.get("PROMPTHUB_UPDATE_SCREENSHOTS"):
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, DOCS_SHOTS / png.name)


def _train(page, base: str, *, epochs: int) -> str:
    """Fill the hyperparameters, start training, wait on the job page; returns the job id."""
    for name, value in (
        ("epochs", epochs),
        ("lr", 0.02),
        ("batch_size", 4),
        ("prefix_length", 8),
        ("max_length", 32),
        ("holdout_fraction", 0.25),
    ):
        page.fill(f"#hp-{name}", str(value))
    page.click("#start")
    page.wait_for_url(lambda url: "#/jobs/" in url)
    job_id = page.url.rsplit("/", 1)[1]
    rendered(page, f"#/jobs/{job_id}")
    # the curves are drawn from the progress the job reports while it runs, polled every second
    page.wait_for_selector("#loss-chart svg circle", state="attached", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#job-state:text('succeeded')", timeout=JOB_TIMEOUT_MS)
    history = httpx.get(f"{base}/jobs/{job_id}").json()["progress"]["history"]
    held_out = [h for h in history if h.get("stage") != "refit"]
    assert len(held_out) >= 2, history  # early stopping waits more than one epoch
    # the held-out split (a quarter of the file) came out of train: the run then refit on all of
    # it, a loss series of its own with its epochs after the first run's, and no eval points
    refit = [h for h in history if h.get("stage") == "refit"]
    assert [h["epoch"] for h in refit] == [len(held_out) + i + 1 for i in range(len(held_out))]
    assert "refit on all of train" in page.inner_text("#loss-chart")
    # one loss point per epoch at least (each epoch's end; more where a poll caught it mid-epoch),
    # one eval point per held-out epoch
    page.wait_for_function(
        "n => document.querySelectorAll('#loss-chart svg circle').length >= n", arg=len(history)
    )
    assert len(page.query_selector_all("#metric-chart svg circle")) == len(held_out)
    return job_id


def test_console_whole_story(server, chromium, tmp_path: Path):
    base, log = server
    shots = tmp_path / "screens"
    shots.mkdir()
    good = tmp_path / "reviews.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"text": "no label here"}) + "\n")

    context = chromium.new_context(viewport={"width": 1100, "height": 760})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    outside = loopback_only(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # 1. tasks: empty at first
    page.goto(f"{base}/ui")
    rendered(page, "#/tasks")  # /ui opens the task list
    page.wait_for_selector("text=No tasks yet.")

    # 2. new task: a bad file shows the API's error with its line and field
    page.click("nav >> text=New task")
    rendered(page, "#/new")
    assert page.input_value("#hp-epochs") == "30"  # the options table's default is shown
    assert page.input_value("#hp-lr") == ""  # a per-task-type default: the server picks it
    page.fill("#task-name", "reviews")
    page.set_input_files("#file", str(bad))
    alert = page.wait_for_selector("#upload-result [role=alert]")
    assert "line 2: field 'label': missing" in alert.inner_text(), alert.inner_text()
    _shot(page, shots, "new-task-error")

    page.set_input_files("#file", str(good))
    page.wait_for_selector("#preview")
    assert page.inner_text("#preview-rows") == "24"
    assert "pos" in page.inner_text("#preview") and "I loved this movie" in page.inner_text("#preview")
    _shot(page, shots, "new-task")

    # 3. train, watch the curve and the eval metric per epoch, the version produced
    job1 = _train(page, base, epochs=3)
    assert "reviews v1" in page.inner_text("#job-version")
    _shot(page, shots, "job")
    page.set_viewport_size({"width": 390, "height": 844})
    # the job is over (no more polls): its charts are drawn again for the new width
    page.wait_for_function("() => document.querySelector('#loss-chart svg').viewBox.baseVal.width < 400")
    _shot(page, shots, "phone-job")
    page.set_viewport_size({"width": 1100, "height": 760})
    page.click("nav >> text=Jobs")
    rendered(page, "#/jobs")
    assert page.query_selector(f"#job-list a[href='#/jobs/{job1}']")

    # 4. try it
    goto(page, base, "#/try/reviews")
    page.fill("#in-text", "what a wonderful, moving film")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#try-out .bars")
    assert page.inner_text("#try-out .answer") in ("pos", "neg")

    # a second version from the uploaded dataset, then both side by side
    page.click("nav >> text=New task")
    rendered(page, "#/new")
    page.fill("#task-name", "reviews")
    page.select_option("#dataset", index=1)
    page.wait_for_selector("#preview")
    _train(page, base, epochs=2)
    assert "reviews v2" in page.inner_text("#job-version")
    goto(page, base, "#/try/reviews")
    page.select_option("#try-a", "2")
    page.select_option("#try-b", "1")
    page.fill("#in-text", "what a wonderful, moving film")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#try-out section:nth-child(2) .bars")
    assert [h.inner_text() for h in page.query_selector_all("#try-out h3")] == ["v2", "v1"]
    _shot(page, shots, "try")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(page, shots, "phone-try")
    page.set_viewport_size({"width": 1100, "height": 760})

    # 5. roll back to v1, promote v2, roll back again: each through the confirmation dialog
    def activate(version: int) -> None:
        if page.evaluate("() => document.querySelector('main').dataset.rendered") != "#/tasks/reviews":
            goto(page, base, "#/tasks/reviews")
        page.click(f"[data-activate='{version}']")
        page.click("#confirm-ok")
        page.wait_for_selector(f"#active-version:text('v{version}')")
        served = httpx.post(f"{base}/predict/reviews", json={"inputs": ["fine"]}).json()
        assert served["version"] == version

    activate(1)
    activate(2)
    activate(1)
    page.click("#copy-curl")
    page.wait_for_selector("#status:text('curl example copied')")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == page.inner_text("#curl") and copied.startswith(f"curl -s {base}/predict/reviews")
    _shot(page, shots, "task")
    page.click("nav >> text=Tasks")
    rendered(page, "#/tasks")
    assert page.query_selector("#task-list a[href='#/tasks/reviews']")
    _shot(page, shots, "tasks")

    # 6. hub overview from /metrics: requests and mean latency per task, queue, batches, cache, worker
    page.click("nav >> text=Hub")
    rendered(page, "#/hub")
    row = page.inner_text("#task-requests tbody tr")
    assert row.split("\t")[0].strip() == "reviews", row
    metrics = httpx.get(f"{base}/metrics").text
    predicted = [
        line
        for line in metrics.splitlines()
        if line.startswith(
            'prompthub_task_request_latency_seconds_count{route="/predict/{task}",task="reviews"}'
        )
    ]
    assert predicted and f"\t{int(float(predicted[0].split()[-1]))}\t" in row, (predicted, row)
    assert "running" in page.inner_text("#worker-state")  # the supervised embedded worker (/readyz)
    workers = httpx.get(f"{base}/workers").json()
    assert len(workers) == 1 and workers[0]["id"][:12] in page.inner_text("#workers")  # its heartbeat
    _shot(page, shots, "hub")

    # 7. keyboard: the nav links are reachable and followed with Enter
    page.focus("nav a[data-page='jobs']")
    page.keyboard.press("Enter")
    rendered(page, "#/jobs")
    page.wait_for_selector("nav a[data-page='jobs'][aria-current=page]")

    # 8. phone width: nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    goto(page, base, "#/tasks/reviews")
    assert page.evaluate("document.documentElement.scrollWidth") <= 391
    _shot(page, shots, "phone-task")
    page.set_viewport_size({"width": 1100, "height": 760})

    # 9. the API docs render offline (their assets come from the package)
    page.click("nav >> text=API docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "PromptHub" in page.inner_text(".swagger-ui .info .title")
    page.screenshot(path=str(shots / "docs.png"))
    page.goto(f"{base}/redoc")
    page.wait_for_selector("h1:has-text('PromptHub')", timeout=60_000)
    page.screenshot(path=str(shots / "redoc.png"))

    assert outside == [], f"requests left the machine: {outside}"
    assert errors == [], f"script errors: {errors}"
    context.close()
    _publish_shots(shots)
    print(f"screenshots: {shots}")


def test_try_it_renders_each_task_type(shipped_server, chromium, tmp_path: Path):
    """Classification as score bars, token classification as tags (and entity marks), QA as the
    answer marked in its context, regression as a score; shipped tasks plus a small regression."""
    base, _ = shipped_server
    # no QA prefix is shipped (QA is train-your-own): a small one, trained here, is enough to draw
    ctx = "The Eiffel Tower is a wrought-iron tower in Paris. It was built for the 1889 World Fair."
    qa = [
        {
            "question": "When was the tower built?",
            "context": ctx,
            "answers": {"text": ["1889"], "answer_start": [ctx.index("1889")]},
        },
        {
            "question": "Where is the tower?",
            "context": ctx,
            "answers": {"text": ["Paris"], "answer_start": [ctx.index("Paris")]},
        },
    ] * 4
    r = httpx.post(
        f"{base}/train",
        json={
            "task": "tower-qa",
            "task_type": "question-answering",
            "train": {"records": qa},
            "hyperparameters": {
                "epochs": 1,
                "batch_size": 8,
                "prefix_length": 4,
                "max_length": 64,
                "doc_stride": 32,
            },
        },
    )
    assert r.status_code == 202, r.text
    pairs = [("a man plays guitar", "someone plays music", 4.0), ("a dog runs", "the market fell", 0.2)] * 4
    r = httpx.post(
        f"{base}/train",
        json={
            "task": "similarity",
            "task_type": "regression",
            "train": {"records": [{"text": a, "text_pair": b, "score": y} for a, b, y in pairs]},
            "hyperparameters": {"epochs": 1, "batch_size": 8, "prefix_length": 4, "max_length": 32},
        },
    )
    assert r.status_code == 202, r.text
    shots = tmp_path / "screens"
    shots.mkdir()
    page = chromium.new_page(viewport={"width": 1100, "height": 760})

    def run(task: str, fields: dict[str, str], expect: str) -> None:
        # a hash change re-renders the page in place: the old form (whose task list names every
        # task) stays until the new one is drawn, so wait for this task's page to be drawn
        goto(page, base, f"#/try/{task}")
        assert page.input_value("#try-task") == task
        for sel, value in fields.items():
            page.fill(sel, value)
        page.click("#try-form button[type=submit]")
        page.wait_for_selector(f"#try-out {expect}")
        _shot(page, shots, f"try-{task}")

    run("banking77", {"#in-text": "I still have not received my new card"}, ".bars")
    assert "(77 in all)" in page.inner_text("#try-form")
    run("brown-pos", {"#in-text": "The jury praised the city."}, ".tokens small")
    assert "at" in page.inner_text("#try-out .tokens")  # Brown's article tag
    deadline = httpx.Timeout(5)
    for name in ("tower-qa", "similarity"):
        for _ in range(600):
            if httpx.get(f"{base}/tasks/{name}", timeout=deadline).status_code == 200:
                break
            time.sleep(0.5)
    run("tower-qa", {"#in-question": "When was the tower built?", "#in-context": ctx}, "mark")
    assert page.inner_text("#try-out mark") == page.inner_text("#try-out .answer")
    run("similarity", {"#in-text": "a cat sleeps", "#in-pair": "a kitten is asleep"}, ".big")
    float(page.inner_text("#try-out .big"))
    page.close()
    _publish_shots(shots)
