"""Cursor pages for the list routes (GET /tasks, /jobs, /datasets).

The body stays a JSON list (existing callers keep working); the next page is announced in headers:
`X-Next-Cursor: <cursor>` and `Link: </tasks?cursor=...&limit=...>; rel="next"`, absent on the
last page. A cursor is opaque to clients: base64url of the JSON of the last sort key handed out
(a task's name; a job's or dataset's (created_at, id)), so rows inserted between two pages neither
repeat nor shift a row out of the next page. `limit` defaults to DEFAULT_LIMIT, at most MAX_LIMIT.

Rows a key may not see (a key limited to some tasks) are filtered after the query: a page is
filled from several batches, scanning at most MAX_SCAN_BATCHES of them; a page may then be short and
still carry a cursor (where the scan stopped).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import Query, Request, Response

from app.api.errors import InputError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR_CHARS = 512
MAX_SCAN_BATCHES = 20

LimitQuery = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description=f"rows per page (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})"),
]
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_CHARS,
        description="the X-Next-Cursor of the previous page (opaque); absent: the first page",
    ),
]

T = TypeVar("T")

#: OpenAPI: the headers a page answers with (the list routes' `responses=`)
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "X-Next-Cursor": {
                "description": "the cursor of the next page (pass it as ?cursor=); absent on the last page",
                "schema": {"type": "string"},
            },
            "Link": {
                "description": 'the next page\'s URL, rel="next" (RFC 8288); absent on the last page',
                "schema": {"type": "string"},
            },
        }
    }
}


def encode_cursor(key: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    raw = json.dumps(plain, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, kinds: Sequence[type]) -> tuple[Any, ...] | None:
    """The sort key in `cursor` (each part of the type in `kinds`: str or datetime), or a 422 at
    query.cursor."""
    if cursor is None:
        return None
    bad = InputError.at(["query", "cursor"], "not a cursor of this list: pass X-Next-Cursor as it came")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(values, list) or len(values) != len(kinds):
        raise bad
    out: list[Any] = []
    for v, kind in zip(values, kinds, strict=True):
        if not isinstance(v, str):
            raise bad
        if kind is datetime:
            try:
                v = datetime.fromisoformat(v)
            except ValueError:
                raise bad from None
            if v.tzinfo is None:
                raise bad
        out.append(v)
    return tuple(out)


def fill_page(
    fetch: Callable[[tuple[Any, ...] | None, int], list[T]],
    key: Callable[[T], tuple[Any, ...]],
    keep: Callable[[T], bool],
    after: tuple[Any, ...] | None,
    limit: int,
) -> tuple[list[T], tuple[Any, ...] | None]:
    """(page, key of its last row or None when the list ends there) from `fetch(after, n)`, which
    returns the n rows after a key in the list's order; rows failing `keep` are skipped."""
    page: list[T] = []
    batch = limit + 1  # one more than a page: tells whether another page follows
    for _ in range(MAX_SCAN_BATCHES):
        rows = fetch(after, batch)
        for row in rows:
            if not keep(row):
                after = key(row)
                continue
            if len(page) == limit:
                return page, key(page[-1])  # a kept row follows the page
            page.append(row)
            after = key(row)
        if len(rows) < batch:
            return page, None
    return page, after  # scanned enough for one request: the next page goes on from here


def set_next(response: Response, request: Request, next_key: tuple[Any, ...] | None) -> None:
    if next_key is None:
        return
    cursor = encode_cursor(next_key)
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    params.append(("cursor", cursor))
    response.headers["X-Next-Cursor"] = cursor
    response.headers["Link"] = f'<{request.url.path}?{urlencode(params)}>; rel="next"'
