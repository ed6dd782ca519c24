"""Python client for a PromptHub server (httpx only; tqdm optional for progress bars)."""

from prompthub_client.client import Client, Job
from prompthub_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidInput,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    PromptHubError,
    RateLimited,
    ServerError,
    Unauthorized,
)
from prompthub_client.models import Dataset, JobInfo, Prediction, Task, Version

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "BadRequest",
    "Client",
    "Conflict",
    "Dataset",
    "Forbidden",
    "InvalidInput",
    "Job",
    "JobFailed",
    "JobInfo",
    "NotFound",
    "PayloadTooLarge",
    "Prediction",
    "PromptHubError",
    "RateLimited",
    "ServerError",
    "Task",
    "Unauthorized",
    "Version",
]
