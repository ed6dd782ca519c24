"""Task names: validated once, at the edges (API, versions, store), never inside the database layer."""

from __future__ import annotations

import re

TASK_NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_TASK_NAME = re.compile(TASK_NAME_RE)


def validate_task_name(name: str) -> str:
    """Return `name` if it is a valid task name, else raise ValueError saying why.

    Names are also folder names in the prompt store, so nothing but lower-case letters, digits,
    '-' and '_' is allowed (no '/', '..', spaces or upper case), 1 to 64 characters, starting
    with a letter or digit.
    """
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        shown = name if isinstance(name, str) else type(name).__name__
        raise ValueError(
            f"invalid task name {shown!r}: use 1-64 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit (no upper case, '/', '.' or spaces)"
        )
    return name


def is_task_name(name: str) -> bool:
    return isinstance(name, str) and _TASK_NAME.fullmatch(name) is not None
