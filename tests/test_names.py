"""Task names are validated outside the database layer (they are also folder names in the store)."""

from __future__ import annotations

import pytest

from app import names


@pytest.mark.parametrize("name", ["a", "sentiment", "ner-conll_2003", "0abc", "a" * 64])
def test_valid_task_names(name):
    assert names.validate_task_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "A", "Sent", "../x", "a/b", "a b", ".hidden", "-x", "_x", "a" * 65, "a.b", "x\n"]
)
def test_invalid_task_names(name):
    with pytest.raises(ValueError, match="invalid task name"):
        names.validate_task_name(name)


def test_is_task_name():
    assert names.is_task_name("sent") and not names.is_task_name("../x") and not names.is_task_name(3)
