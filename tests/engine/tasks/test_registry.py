"""The registry: names, lookup errors, and every type implementing the whole interface."""

from __future__ import annotations

import inspect

import pytest

from app.engine import tasks
from app.engine.tasks.base import TaskType


def test_names_in_registry_order():
    assert tasks.TASK_TYPES == ("classification", "token-classification", "question-answering", "regression")
    assert [tasks.get(t).name for t in tasks.TASK_TYPES] == list(tasks.TASK_TYPES)


def test_unknown_type_lists_the_choices():
    with pytest.raises(ValueError) as info:
        tasks.get("multiple-choice")
    assert str(info.value) == (
        "unknown task type 'multiple-choice'; expected one of "
        "classification, token-classification, question-answering, regression"
    )
    with pytest.raises(ValueError):
        tasks.get(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", tasks.TASK_TYPES)
def test_each_type_implements_the_interface(name):
    t = tasks.get(name)
    assert isinstance(t, TaskType) and not inspect.isabstract(type(t))
    ex = t.example_type.__new__(t.example_type)
    assert tasks.of_example(ex) is t
    assert "linear" in t.heads


def test_no_task_type_dispatch_outside_the_task_modules():
    """Task-type behaviour lives in app/engine/tasks/: nobody else compares task type names."""
    from pathlib import Path

    root = Path(tasks.__file__).resolve().parents[1]
    offenders = []
    for path in root.rglob("*.py"):
        if "tasks" in path.relative_to(root).parts:
            continue
        text = path.read_text()
        for needle in ("task_type ==", "task_type !=", "isinstance(ex, "):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []


def test_naming_the_task_types_imports_no_torch():
    """The CLI's parser and the API's TaskType need the names only: `prompthub keys ...` and
    `prompthub doctor` start without loading torch."""
    import subprocess
    import sys

    code = (
        "import sys; from app.cli import build_parser; from app.engine.tasks import TASK_TYPES; "
        "build_parser(); assert 'regression' in TASK_TYPES; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
