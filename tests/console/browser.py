"""Waits shared by the console's browser tests. The console marks `main[data-rendered]` with the
hash of the page it has drawn (after its data arrived), so a test waits for the page it asked for,
never acting on the previous page's elements (a hash change re-renders `main` in place)."""

from __future__ import annotations

from urllib.parse import urlparse


def rendered(page, hash_: str, timeout: float = 30_000) -> None:
    """Wait until the console has drawn the page of `hash_`."""
    page.wait_for_function(
        "h => document.querySelector('main').dataset.rendered === h", arg=hash_, timeout=timeout
    )


def goto(page, base: str, hash_: str) -> None:
    """Open the console's page `hash_` (e.g. "#/tasks/reviews") and wait until it is drawn."""
    page.goto(f"{base}/ui{hash_}")
    rendered(page, hash_)


def loopback_only(context) -> list[str]:
    """Abort every request of `context` to a host other than 127.0.0.1 (a machine without
    internet); returns the list the aborted URLs are added to."""
    outside: list[str] = []

    def route(r) -> None:
        if urlparse(r.request.url).hostname != "127.0.0.1":
            outside.append(r.request.url)
            r.abort()
        else:
            r.continue_()

    context.route("**/*", route)
    return outside
