"""`Client(url, key)`: the PromptHub HTTP API as Python calls, on httpx only.

List calls (`tasks`, `jobs`, `datasets`) are generators that follow the server's cursor pages
(`X-Next-Cursor`). `train` sends an Idempotency-Key (a fresh one unless given) and retries a request
that got no answer (connection error, 502, 503, 504) with the same key, so a retry never queues a
second job.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from prompthub_client.errors import JobFailed, PromptHubError, error_for
from prompthub_client.models import Dataset, JobInfo, Prediction, Task, Version
from prompthub_client.progress import Progress

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_ENV = "PROMPTHUB_KEY"
URL_ENV = "PROMPTHUB_URL"
RETRY_STATUSES = (502, 503, 504)
DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")


class Job:
    """A training job on the server: `refresh()` reads it, `wait()` follows it to the end."""

    def __init__(self, client: Client, job_id: str, info: JobInfo | None = None) -> None:
        self.client = client
        self.id = job_id
        self.info = info

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.info.state if self.info else '?'})"

    @property
    def state(self) -> str:
        return (self.info or self.refresh()).state

    def refresh(self) -> JobInfo:
        self.info = JobInfo.from_json(self.client._request("GET", f"/jobs/{self.id}").json())
        return self.info

    def cancel(self) -> JobInfo:
        self.info = JobInfo.from_json(self.client._request("POST", f"/jobs/{self.id}/cancel").json())
        return self.info

    def wait(
        self,
        timeout: float | None = None,
        poll_s: float = 1.0,
        progress: bool = True,
        raise_on_failure: bool = True,
    ) -> JobInfo:
        """Poll until the job ends; show its progress on stderr (a tqdm bar when tqdm is installed,
        else plain lines). Raises JobFailed when it failed or was cancelled (unless
        raise_on_failure is False) and TimeoutError after `timeout` seconds."""
        bar = Progress(self.id) if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                info = self.refresh()
                if info.done:
                    break
                if bar is not None:
                    bar.update(info.state, info.progress)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {self.id} still {info.state} after {timeout} s")
                time.sleep(poll_s)
        finally:
            if bar is not None and self.info is not None:
                bar.close(self.info.state, self.info.progress)
        if raise_on_failure and info.state != "succeeded":
            raise JobFailed(info)
        return info


class Client:
    """A PromptHub server at `url` (default $PROMPTHUB_URL or http://127.0.0.1:8000), with API key
    `key` (default $PROMPTHUB_KEY; none needed on a loopback connection to a loopback server)."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = key if key is not None else os.environ.get(KEY_ENV)
        headers = {"User-Agent": "prompthub-client/0.1"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.retries = retries
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, *, retry: bool = False, **kw: Any) -> httpx.Response:
        """One call; an error status raises its ApiError. With `retry`, a call that got no answer
        (or 502/503/504) is sent again, up to `retries` times, with a growing pause."""
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                r = self._http.request(method, path, **kw)
            except httpx.TransportError as e:
                if attempt + 1 >= attempts:
                    raise PromptHubError(f"{method} {self.url}{path}: {e}") from e
                time.sleep(min(8.0, 0.5 * 2**attempt))
                continue
            if r.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                time.sleep(min(8.0, 0.5 * 2**attempt))
                continue
            if r.status_code >= 400:
                try:
                    body: Any = r.json()
                except ValueError:
                    body = r.text
                raise error_for(r.status_code, body, r.headers)
            return r
        raise AssertionError("unreachable")

    def _pages(self, path: str, params: Mapping[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
        query = {k: v for k, v in params.items() if v is not None}
        query["limit"] = page_size
        while True:
            r = self._request("GET", path, params=query)
            yield from r.json()
            cursor = r.headers.get("x-next-cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    # ------------------------------------------------------------------ inference
    def predict(
        self,
        task: str,
        inputs: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]],
        version: int | None = None,
    ) -> Prediction:
        """Predictions of `task` (its active version, or `version`) for `inputs`: texts, or dicts
        such as {"text", "text_pair"}, {"tokens"}, {"question", "context"}."""
        one = isinstance(inputs, (str, Mapping))
        body: dict[str, Any] = {"inputs": [inputs] if one else list(inputs)}
        if version is not None:
            body["version"] = version
        return Prediction.from_json(self._request("POST", f"/predict/{task}", json=body).json())

    def embed(self, inputs: str | Sequence[str], task: str | None = None) -> list[list[float]]:
        """Sentence embeddings from the server's backbone (POST /embed), optionally conditioned on
        a task's prefix."""
        body: dict[str, Any] = {"inputs": [inputs] if isinstance(inputs, str) else list(inputs)}
        if task is not None:
            body["task"] = task
        data = self._request("POST", "/embed", json=body).json()
        # the server answers a list of vectors (text-embeddings-inference's shape)
        return [list(v) for v in (data["embeddings"] if isinstance(data, dict) else data)]

    # ------------------------------------------------------------------ datasets
    def upload_dataset(
        self,
        file: str | os.PathLike[str] | bytes,
        *,
        task_type: str | None = None,
        filename: str | None = None,
    ) -> Dataset:
        """Upload a JSONL / JSON / CSV / TSV file (a path, or bytes with `filename`)."""
        if isinstance(file, bytes):
            if not filename:
                raise ValueError("upload_dataset: give filename= with bytes (its suffix is the format)")
            content = file
        else:
            path = Path(file)
            filename = filename or path.name
            content = path.read_bytes()
        data = {"task_type": task_type} if task_type else None
        r = self._request("POST", "/datasets", files={"file": (filename, content)}, data=data)
        return Dataset.from_json(r.json())

    def datasets(
        self, *, task_type: str | None = None, filename_prefix: str | None = None, page_size: int = 100
    ) -> Iterator[Dataset]:
        params = {"task_type": task_type, "filename_prefix": filename_prefix}
        for doc in self._pages("/datasets", params, page_size):
            yield Dataset.from_json(doc)

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/datasets/{dataset_id}")

    # ------------------------------------------------------------------ training
    def _source(self, data: Any, task_type: str) -> dict[str, Any]:
        """A split as the API takes it: records (a list of dicts), a Dataset, {"dataset_id"} or
        {"records"} as is, or a file path (uploaded first)."""
        if isinstance(data, Dataset):
            return {"dataset_id": data.id}
        if isinstance(data, Mapping):
            return dict(data)
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            if path.suffix.lower() in DATA_SUFFIXES and path.is_file():
                return {"dataset_id": self.upload_dataset(path, task_type=task_type).id}
            raise ValueError(f"{data!s}: no such data file (give records, a Dataset or a .jsonl/.csv path)")
        return {"records": list(data)}

    def _task_doc(
        self, task: str, task_type: str, train: Any, eval: Any, labels: Sequence[str] | None
    ) -> dict:
        doc: dict[str, Any] = {"task": task, "task_type": task_type, "train": self._source(train, task_type)}
        if eval is not None:
            doc["eval"] = self._source(eval, task_type)
        if labels is not None:
            doc["labels"] = list(labels)
        return doc

    def _submit(self, body: dict[str, Any], idempotency_key: str | None) -> Job:
        key = idempotency_key or f"pyclient-{uuid.uuid4()}"
        r = self._request("POST", "/train", json=body, headers={"Idempotency-Key": key}, retry=True)
        doc = r.json()
        return Job(self, doc["job_id"], JobInfo(id=doc["job_id"], state=doc["state"]))

    def train(
        self,
        task: str,
        task_type: str,
        train: Any,
        eval: Any = None,
        *,
        labels: Sequence[str] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        init_from: str | None = None,
        activate: str = "always",
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a training job for one task; `train`/`eval`: records, a Dataset, a dataset id as
        {"dataset_id": ...}, or a file path (uploaded first). `activate`: always | never |
        if_better. Returns the Job (call `.wait()`)."""
        body = self._task_doc(task, task_type, train, eval, labels)
        body["hyperparameters"] = dict(hyperparameters or {})
        body["activate"] = activate
        if init_from is not None:
            body["init_from"] = init_from
        return self._submit(body, idempotency_key)

    def train_multi(
        self,
        tasks: Sequence[Mapping[str, Any]],
        *,
        hyperparameters: Mapping[str, Any] | None = None,
        per_task_epochs: int = 0,
        activate: str = "always",
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue one job training a shared prefix over several tasks; each item: {"task",
        "task_type", "train", "eval"?, "labels"?} (train/eval as in `train`)."""
        docs = [
            self._task_doc(t["task"], t["task_type"], t["train"], t.get("eval"), t.get("labels"))
            for t in tasks
        ]
        body = {
            "tasks": docs,
            "hyperparameters": dict(hyperparameters or {}),
            "per_task_epochs": per_task_epochs,
            "activate": activate,
        }
        return self._submit(body, idempotency_key)

    def job(self, job_id: str) -> Job:
        job = Job(self, job_id)
        job.refresh()
        return job

    def jobs(
        self, *, state: str | None = None, task: str | None = None, page_size: int = 100
    ) -> Iterator[JobInfo]:
        for doc in self._pages("/jobs", {"state": state, "task": task}, page_size):
            yield JobInfo.from_json(doc)

    # ------------------------------------------------------------------ tasks and versions
    def tasks(
        self, *, task_type: str | None = None, name_prefix: str | None = None, page_size: int = 100
    ) -> Iterator[Task]:
        for doc in self._pages("/tasks", {"task_type": task_type, "name_prefix": name_prefix}, page_size):
            yield Task.from_json(doc)

    def task(self, name: str) -> Task:
        """One task with its versions."""
        return Task.from_json(self._request("GET", f"/tasks/{name}").json())

    def versions(self, name: str) -> list[Version]:
        return self.task(name).versions

    def activate(self, task: str, version: int) -> Task:
        """Serve `version` of `task` from now on (roll back or forward)."""
        return Task.from_json(self._request("POST", f"/tasks/{task}/versions/{int(version)}/activate").json())

    def delete_task(self, name: str) -> int:
        """Delete a task and its versions; returns how many versions it had."""
        return int(self._request("DELETE", f"/tasks/{name}").json().get("versions", 0))
