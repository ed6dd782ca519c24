"""The task types, one module each, and the registry the rest of the engine asks.

Adding a task type: one module with a TaskType subclass, and one line in _REGISTRY. Modules are
imported on first use, so naming the task types (an API schema, the CLI's choices) costs no torch
import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.engine.tasks.base import TaskType

#: task type -> "module:class" under app.engine.tasks
_REGISTRY: dict[str, str] = {
    "classification": "classification:Classification",
    "token-classification": "token_classification:TokenClassification",
    "question-answering": "question_answering:QuestionAnswering",
    "regression": "regression:Regression",
}
_LOADED: dict[str, TaskType] = {}

TASK_TYPES: tuple[str, ...] = tuple(_REGISTRY)


def get(task_type: str) -> TaskType:
    """The task type of that name; ValueError listing the choices otherwise."""
    task = _LOADED.get(task_type) if isinstance(task_type, str) else None
    if task is not None:
        return task
    try:
        where = _REGISTRY[task_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}"
        ) from None
    module, cls = where.split(":")
    task = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    _LOADED[task_type] = task
    return task


def of_example(example: object) -> TaskType:
    """The task type whose parse() makes examples of this class."""
    for name in TASK_TYPES:
        if isinstance(example, get(name).example_type):
            return get(name)
    raise TypeError(f"{type(example).__name__} is not an example of any task type")


__all__ = ["TASK_TYPES", "get", "of_example"]
