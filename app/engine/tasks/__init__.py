"""The task types, one module each, and the registry the rest of the engine asks.

Adding a task type: one module with a TaskType subclass, and one line in _REGISTRY.
"""

from __future__ import annotations

from app.engine.tasks.base import HeadLayout, TaskType
from app.engine.tasks.classification import Classification
from app.engine.tasks.question_answering import QuestionAnswering
from app.engine.tasks.regression import Regression
from app.engine.tasks.token_classification import TokenClassification

_REGISTRY: dict[str, TaskType] = {
    t.name: t for t in (Classification(), TokenClassification(), QuestionAnswering(), Regression())
}

TASK_TYPES: tuple[str, ...] = tuple(_REGISTRY)


def get(task_type: str) -> TaskType:
    """The task type of that name; ValueError listing the choices otherwise."""
    try:
        return _REGISTRY[task_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}"
        ) from None


def check_task_type(task_type: str) -> str:
    get(task_type)
    return task_type


def of_example(example: object) -> TaskType:
    """The task type whose parse() makes examples of this class."""
    for t in _REGISTRY.values():
        if isinstance(example, t.example_type):
            return t
    raise TypeError(f"{type(example).__name__} is not an example of any task type")


__all__ = ["TASK_TYPES", "HeadLayout", "TaskType", "check_task_type", "get", "of_example"]
