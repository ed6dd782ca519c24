"""Errors of the database layer."""

from __future__ import annotations


class NotFound(LookupError):
    """No such task, version, dataset or job."""


class Conflict(ValueError):
    """The change contradicts what is stored (a version that exists, another task type...)."""


class TooManyJobs(RuntimeError):
    """The job queue is full."""
