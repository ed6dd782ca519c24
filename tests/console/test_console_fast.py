"""The console in headless Chromium on a small server (uvicorn in a thread, the tiny test backbone,
no worker): the API key kept for the browser session only, the keyless loopback mode, a job's
curves drawn as its progress arrives, cancel, a failed job's reason, and on every page labelled
controls, buttons reached with Tab and nothing wider than a phone's screen. Each wait is on the page
that was asked for (tests.console.browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from tests.console.browser import goto, loopback_only, rendered
from tests.helpers import ServerThread, publish_task, session_for

pytestmark = pytest.mark.browser

CLS_RECORDS = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}]

#: form controls without a label, an aria-label or aria-labelledby; buttons without a name
UNLABELLED = """() => {
  const visible = (e) => e.getClientRects().length > 0;
  const controls = [...document.querySelectorAll('input, select, textarea')].filter((e) => e.type !== 'hidden')
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'));
  const buttons = [...document.querySelectorAll('button')].filter(visible)
    .filter((b) => !b.textContent.trim() && !b.getAttribute('aria-label'));
  return [...controls, ...buttons].map((e) => e.outerHTML.slice(0, 120));
}"""

#: every visible, enabled button and link of the page (header and main), by a description
FOCUSABLE = """() => [...document.querySelectorAll('header a, header button, header input, main a, main button, main input, main select, main textarea')]
  .filter((e) => e.getClientRects().length > 0 && !e.disabled)
  .map((e) => e.id || e.getAttribute('href') || e.dataset.activate || e.textContent.trim())"""


def tab_reaches_all(page) -> None:
    """Tab from the top of the page reaches each visible control of the header and the page."""
    want = page.evaluate(FOCUSABLE)
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    page.focus("body")
    reached: list[str] = []
    for _ in range(len(want) + 15):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate(
                "() => { const e = document.activeElement;"
                " return e.id || e.getAttribute('href') || e.dataset.activate || e.textContent.trim(); }"
            )
        )
    missing = [w for w in want if w not in reached]
    assert missing == [], f"not reached with Tab: {missing}"


@pytest.fixture
def small_server(settings_factory, hub_factory):
    """`make(**settings)` -> (base URL, settings): a server on 127.0.0.1 with one task, `reviews`."""
    from app.main import create_app

    servers: list[ServerThread] = []

    def make(**overrides):
        settings = settings_factory(**overrides)
        hub = hub_factory(settings)
        publish_task(settings, hub.backbone, "reviews", "classification")
        srv = ServerThread(create_app(settings, hub), settings).__enter__()
        servers.append(srv)
        return srv.base, settings

    yield make
    for srv in servers:
        srv.__exit__(None, None, None)


def test_a_typed_key_lives_in_the_session_only(small_server, chromium):
    from app.db import keys

    base, settings = small_server(auth="required", auth_cache_s=0.0)
    with session_for(settings) as s:
        token = keys.create_key(s, name="console", scopes=["admin"])[1]
    context = chromium.new_context()
    page = context.new_page()
    goto(page, base, "#/tasks")
    alert = page.inner_text("main [role=alert]")
    assert "401" in alert and "Type an API key" in alert, alert
    assert page.inner_text("#key-state") == "this server needs a key"

    page.fill("#api-key", token)
    page.press("#api-key", "Enter")  # the key form submits with Enter
    page.wait_for_selector("#task-list a[href='#/tasks/reviews']")
    assert page.input_value("#api-key") == ""  # not left in the field
    assert page.inner_text("#key-state") == f"key …{token[-4:]} in use"
    stored = page.evaluate("() => [sessionStorage.getItem('prompthub.key'), localStorage.length]")
    assert stored == [token, 0]
    assert token not in page.evaluate("() => document.cookie")

    page.reload()  # same tab, same session: still signed in
    rendered(page, "#/tasks")
    page.wait_for_selector("#task-list a[href='#/tasks/reviews']")

    other = context.new_page()  # a new tab starts a new session: no key
    goto(other, base, "#/tasks")
    assert "401" in other.inner_text("main [role=alert]")
    other.close()

    page.click("#key-forget")
    page.wait_for_selector("main [role=alert]")
    assert page.evaluate("() => sessionStorage.getItem('prompthub.key')") is None
    context.close()


def test_keyless_loopback_needs_no_key(small_server, chromium):
    base, _ = small_server()  # auth "auto" on 127.0.0.1: keyless
    page = chromium.new_page()
    goto(page, base, "#/tasks")
    page.wait_for_selector("#task-list a[href='#/tasks/reviews']")
    assert page.inner_text("#key-state").startswith("no key")
    assert page.evaluate("() => [sessionStorage.length, localStorage.length]") == [0, 0]
    goto(page, base, "#/hub")
    assert page.inner_text("#queue-depth") == "0"
    assert page.inner_text("#workers tbody") == "No training worker is running."  # none on this server
    page.close()


def _set_job(settings, job_id: str, **values) -> None:
    from app.db.models import Job

    with session_for(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))
        s.commit()


def test_job_curves_grow_as_progress_arrives_cancel_and_failure(small_server, chromium, tmp_path: Path):
    import httpx

    base, settings = small_server()
    body = {"task": "reviews", "task_type": "classification", "train": {"records": CLS_RECORDS}}
    queued = httpx.post(f"{base}/train", json=body).json()["job_id"]
    shots = tmp_path / "screens"
    shots.mkdir()
    page = chromium.new_page(viewport={"width": 1100, "height": 760})

    # a queued job (no worker here): cancel it through the confirmation dialog
    goto(page, base, f"#/jobs/{queued}")
    page.click("#cancel")
    page.click("#confirm-ok")
    page.wait_for_selector("#job-state:text('cancelled')")
    assert page.query_selector("#cancel") is None

    # a running job: each poll (every second) draws the progress it finds
    running = httpx.post(f"{base}/train", json=body).json()["job_id"]
    _set_job(settings, running, state="running")
    goto(page, base, f"#/jobs/{running}")
    assert "no points yet" in page.inner_text("#loss-chart")
    dots = "#loss-chart svg circle"
    steps = [
        ({"step": 2, "total": 8, "epoch": 0.5, "loss": 0.9}, 1),
        ({"step": 4, "total": 8, "epoch": 1.0, "loss": 0.7}, 2),
        ({"step": 6, "total": 8, "epoch": 1.5, "loss": 0.6}, 3),
    ]
    history = [{"epoch": 1, "loss": 0.7, "metrics": {"reviews": {"accuracy": 0.5, "n": 2}}}]
    for progress, n in steps:
        if progress["epoch"] >= 1:
            progress = {**progress, "history": history}
        _set_job(settings, running, progress={**progress, "message": "training"})
        page.wait_for_function(f"n => document.querySelectorAll('{dots}').length === n", arg=n)
        assert page.inner_text("label[for=job-progress]") == f"Step {progress['step']} of 8"
        assert page.inner_text("#job-loss") == str(progress["loss"])
    assert page.query_selector_all("#metric-chart svg circle")  # epoch 1's accuracy
    assert "reviews accuracy 0.5" in page.get_attribute("#metric-chart svg", "aria-label")
    page.screenshot(path=str(shots / "job-running.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # drawn again for the new width
    page.wait_for_function("() => document.querySelector('#loss-chart svg').viewBox.baseVal.width < 400")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(shots / "phone-job-running.png"), full_page=True)
    page.set_viewport_size({"width": 1100, "height": 760})

    # a refresh (the next poll draws the page anew) keeps the keyboard focus where it was
    page.focus("#cancel")
    page.evaluate("() => { document.getElementById('cancel').dataset.before = '1'; }")
    page.wait_for_function("() => !document.querySelector('#cancel[data-before]')")
    assert page.evaluate("() => document.activeElement.id") == "cancel"

    _set_job(settings, running, state="failed", error="CUDA out of memory while training reviews")
    page.wait_for_selector("#job-state:text('failed')")
    assert "CUDA out of memory while training reviews" in page.inner_text("#job-error")
    page.screenshot(path=str(shots / "job-failed.png"), full_page=True)
    goto(page, base, "#/jobs")
    assert page.inner_text("#job-list").count("cancelled") == 1
    assert page.inner_text("#job-list").count("failed") == 1
    page.close()


def test_every_page_is_labelled_keyboard_usable_and_fits_a_phone(small_server, chromium, tmp_path: Path):
    import httpx

    base, _ = small_server()
    job = httpx.post(
        f"{base}/train",
        json={"task": "reviews", "task_type": "classification", "train": {"records": CLS_RECORDS}},
    ).json()["job_id"]
    httpx.post(f"{base}/predict/reviews", json={"inputs": ["fine"]})
    shots = tmp_path / "screens"
    shots.mkdir()
    pages = ["#/tasks", "#/tasks/reviews", "#/new", "#/jobs", f"#/jobs/{job}", "#/try/reviews", "#/hub"]
    for width, height in ((1100, 760), (390, 844)):
        page = chromium.new_page(viewport={"width": width, "height": height})
        for hash_ in pages:
            goto(page, base, hash_)
            assert page.evaluate(UNLABELLED) == [], hash_
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (
                f"{hash_} wider than {width}px"
            )
            if width < 700:
                name = hash_.strip("#/").replace("/", "-").replace(job, "job")
                page.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)
            else:
                tab_reaches_all(page)
        page.close()

    # the keyboard alone: Tab to a version's button, Enter opens the dialog, Escape leaves it
    page = chromium.new_page()
    publish = httpx.get(f"{base}/tasks/reviews").json()
    assert publish["active_version"] == 1
    goto(page, base, "#/tasks/reviews")
    assert page.query_selector("[data-activate]") is None  # one version, active
    page.focus("#copy-curl")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "delete-task"
    page.keyboard.press("Enter")
    page.wait_for_selector("#confirm[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#confirm:not([open])", state="attached")
    assert httpx.get(f"{base}/tasks/reviews").status_code == 200  # not deleted
    page.close()


def _drop(page, name: str, text: str) -> None:
    """Drop a file on the new-task page's drop zone, as a drag from the desktop does."""
    page.evaluate(
        """([name, text]) => {
          const dt = new DataTransfer();
          dt.items.add(new File([text], name, { type: "text/csv" }));
          const zone = document.getElementById("drop");
          zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
          zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        [name, text],
    )


def test_new_task_from_a_dropped_csv_and_the_apis_errors(small_server, chromium):
    base, _ = small_server()
    page = chromium.new_page(viewport={"width": 1100, "height": 760})
    goto(page, base, "#/new")
    page.fill("#task-name", "films")
    # defaults that depend on the task type are shown for the chosen type
    assert page.get_attribute("#hp-lr", "placeholder") == "0.03 for classification"
    page.select_option("#task-type", "regression")
    assert page.get_attribute("#hp-lr", "placeholder") == "0.01 for regression"
    page.select_option("#task-type", "classification")
    assert page.input_value("#hp-epochs") == "30" and page.input_value("#hp-lr") == ""

    # a bad CSV: the API's error names the line and the field
    _drop(page, "films.csv", "text,label\ngood film,pos\nbad film,\n")
    alert = page.wait_for_selector("#upload-result [role=alert]")
    assert "422" in alert.inner_text() and "line 3: field 'label': missing" in alert.inner_text()

    # a good one: columns, rows, label distribution and the first rows
    rows = "".join(f"film {i},{'pos' if i % 3 else 'neg'}\n" for i in range(9))
    _drop(page, "films.csv", "text,label\n" + rows)
    page.wait_for_selector("#preview")
    assert page.inner_text("#preview-rows") == "9"
    assert "text, label" in page.inner_text("#preview")
    assert [b.get_attribute("aria-label") for b in page.query_selector_all("#preview .bars [role=img]")] == [
        "pos: 6",
        "neg: 3",
    ]
    assert page.inner_text("#preview-table tbody tr:first-child") == "film 0\tneg"
    # the dataset is in the picker too, chosen
    assert "films.csv · 9 rows" in page.inner_text("#dataset option:checked")

    # a value out of range: the API's error names the hyperparameter
    page.fill("#hp-epochs", "0")
    page.click("#start")
    alert = page.wait_for_selector("#train-result [role=alert]")
    assert "hyperparameters.epochs" in alert.inner_text(), alert.inner_text()

    page.fill("#hp-epochs", "2")
    page.click("#start")
    page.wait_for_url(lambda url: "#/jobs/" in url)
    job_id = page.url.rsplit("/", 1)[1]
    rendered(page, f"#/jobs/{job_id}")
    assert page.inner_text("#job-state") == "queued"  # no worker on this server

    # delete a task through its confirmation dialog
    goto(page, base, "#/tasks/reviews")
    page.click("#delete-task")
    assert "Delete reviews and all its 1 version(s)?" in page.inner_text("#confirm-text")
    page.click("#confirm-ok")
    rendered(page, "#/tasks")
    page.wait_for_selector("text=No tasks yet.")
    page.close()


def test_api_docs_render_with_no_internet(small_server, chromium):
    """Swagger UI and ReDoc draw the API from their packaged assets; a request to any other host
    is refused (as on a machine without internet) and none is made."""
    base, _ = small_server()
    context = chromium.new_context()
    outside = loopback_only(context)
    page = context.new_page()
    goto(page, base, "#/tasks")
    page.click("nav >> text=API docs")  # the console links the docs
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "PromptHub" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/predict/{task}']")
    page.goto(f"{base}/redoc")
    page.wait_for_selector("h1:has-text('PromptHub')", timeout=60_000)
    page.wait_for_selector("text='/predict/{task}'", state="attached")
    assert outside == []
    context.close()
