"""One settings object for the whole service, read from the environment (prefix PROMPTHUB_).

Example: ``PROMPTHUB_DATABASE_URL=postgresql://user@host/db PROMPTHUB_DEVICES=cuda:0,cuda:1``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTHUB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "sqlite:///var/prompthub.db"
    store_dir: str = "prompts_store"
    data_dir: str = "var/datasets"
    backbone: str = "all-MiniLM-L6-v2"
    devices: str = "cpu"

    # serving
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue_rows: int = 2048
    cache_bytes: int = 536_870_912
    #: padding a forward may waste before the batcher splits it by length (tokens); unset: per device
    bucket_overhead_tokens: float | None = None
    #: tokens one forward may hold, so short requests wait behind at most about one forward of long
    #: ones (batches also go round robin over API keys); unset: 1024 on a CPU, no cap on a GPU; 0: none
    max_batch_tokens: int | None = None
    #: seconds an idle HTTP keep-alive connection stays open (uvicorn's default of 5 s lets a busy
    #: client reuse a connection the server is closing, which it sees as a read error)
    keep_alive_s: float = 30.0
    #: run the per-token work of a padded batch on its real tokens only (torch and compile
    #: runtimes; the ONNX graph always does): false runs every padded position, as before
    pack_tokens: bool = True
    #: intra-op threads for torch (unset: torch's default, one per core)
    torch_threads: int | None = None

    # request limits
    max_body_bytes: int = 10_485_760
    max_inputs_per_request: int = 64
    max_text_chars: int = 20_000
    text_overflow: Literal["truncate", "refuse"] = "truncate"
    max_upload_bytes: int = 52_428_800
    max_dataset_rows: int = 200_000

    # training jobs
    max_queued_jobs: int = 50
    embedded_worker: bool = True
    worker_poll_s: float = 0.5
    job_heartbeat_s: float = 5.0
    job_stale_s: float = 30.0
    on_crash: Literal["requeue", "fail"] = "requeue"
    max_job_attempts: int = 2

    max_running_jobs: int = 4  # concurrent jobs over the whole worker fleet, enforced when a job is claimed

    # resumable training: a running job saves its whole state this often (seconds; 0: never) to
    # <train_state_dir>/<job id>.state (unset: train-state beside data_dir, var/train-state by
    # default; workers that share jobs must share it); a requeued job resumes from it
    checkpoint_every_s: float = 180.0
    train_state_dir: str | None = None

    # access control (docs/security.md)
    auth: Literal["auto", "required", "off"] = "auto"
    auth_cache_s: float = 5.0  # how long a verified key is trusted before it is read again

    log_level: str = "info"
    #: log lines as plain text or one JSON object a line (for log shippers); access lines included
    log_format: Literal["text", "json"] = "text"

    # ---- API edge (issue 12, items 1-4, 8): no work before auth, per-key limits (docs/security.md)
    #: an admin token (ph_ + at least 32 random characters) created or recognised at start, for the
    #: first start of a container; revoke it once real keys exist
    bootstrap_admin_key: str | None = None
    #: bytes of body a request may carry before it is authenticated (open routes, e.g. /healthz)
    unauth_body_bytes: int = 4096
    #: seconds a client has to send a request's headers (from the connection or the last answer)
    header_timeout_s: float = 10.0
    #: seconds a client has to send a whole request body, and the longest pause between its chunks
    body_timeout_s: float = 120.0
    body_idle_timeout_s: float = 15.0
    #: open connections (and requests in flight) before uvicorn answers 503
    max_connections: int = 1024
    #: per-key request rate limits and quotas (`limits` notation, ';' between several: "100/second",
    #: "50000/day"); empty: no limit. Keyless loopback callers are not limited.
    key_rate_limit: str = "20000/minute"
    key_quota: str = ""
    #: seconds between the best-effort writes of keys' last_used_at (never in a request)
    key_touch_interval_s: float = 60.0

    # --- runtime hardening (issue 12, items 9-11 and 15; docs/operations.md) ---
    #: seconds a prediction may wait for its answer (tokenising, queue, forward) before a 504
    predict_timeout_s: float = 30.0
    #: characters of prediction input one API key may have in flight (tokenised, queued or in a
    #: forward); beyond it 429 with Retry-After. A key with nothing in flight is always admitted.
    max_inflight_chars_per_key: int = 200_000
    #: characters of prediction input in flight over the whole server; beyond it 429
    max_inflight_chars: int = 2_000_000
    #: the embedded worker is restarted after an unexpected exit, after worker_restart_backoff_s,
    #: doubling up to worker_restart_backoff_max_s; after worker_max_restarts restarts within
    #: worker_restart_window_s it is left down (state "failed" in /healthz and /readyz)
    worker_restart_backoff_s: float = 1.0
    worker_restart_backoff_max_s: float = 60.0
    worker_max_restarts: int = 10
    worker_restart_window_s: float = 600.0
    #: TESTS ONLY: a fault-injection point name (app.faults) where the process writes
    #: `<fault_pause_file>` and sleeps, so a test can kill -9 it exactly there
    fault_pause: str | None = None
    fault_pause_file: str | None = None
    #: TESTS ONLY: seconds a worker sleeps after each training step (app.faults.step_delay)
    fault_step_delay_s: float = 0.0

    # --- data and consistency (issue 12: items 5-7) ---
    #: labels (or tags) a task may have: checked when /train validates a request and by the worker
    #: when it reads a dataset (200,000 labels made huge checkpoints and /predict answers)
    max_labels: int = 5000
    #: wall-time budget of one training job in seconds; over it the job fails with that reason
    job_max_seconds: float = 21_600.0
    #: resident memory budget of the embedded worker process in MiB (its backbone and the job's data
    #: included): over it the supervisor kills the worker, fails its job with that reason and starts a
    #: new worker. 0: no budget (a container's memory limit then OOM-kills it: recovered as a crash)
    job_max_memory_mb: int = 0
    #: uploaded datasets older than this many days that no queued or running job refers to are
    #: deleted at start and by `prompthub doctor --repair` (0: kept forever)
    dataset_retention_days: float = 30.0

    # --- fleet: serving replicas (issue 13, item 3; docs/deploy.md) ---
    #: seconds a replica trusts its cached answer to "which version of task X is served" when no
    #: notification said otherwise (PostgreSQL only: LISTEN/NOTIFY invalidates at once; the TTL
    #: bounds staleness when a notification is lost). SQLite: no cache, one query a prediction.
    #: 0: no cache anywhere.
    version_cache_ttl_s: float = 0.5

    # --- fleet: store backends (issue 13, item 1; README "Store backends") ---
    #: empty: the local folders store_dir and data_dir (the default). s3://bucket/prefix: checkpoints,
    #: sidecars and uploaded datasets in S3-compatible object storage through boto3; endpoint,
    #: credentials and region from the standard AWS settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)
    store_url: str = ""
    #: node-local read cache of the S3 backend (checkpoints by task/version/sha256, datasets)
    store_cache_dir: str = "var/store-cache"
    #: bytes the read cache may hold; the least recently read files are removed beyond it
    store_cache_bytes: int = 10_737_418_240

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, v: str) -> str:
        v = v.strip()
        if v and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?", v):
            raise ValueError(f"store_url: expected s3://bucket or s3://bucket/prefix, got {v!r}")
        return v

    # --- safe promotion, idempotency (issue 15: item 6) ---
    #: how long an Idempotency-Key of POST /train is remembered, in seconds (a retry with the key
    #: within it gets the first job back; after it the key is forgotten)
    idempotency_ttl_s: float = 86_400.0

    # --- fleet (issue 13, item 2): the training executor (docs/operations.md, "Executors") ---
    #: local: the DB-polling worker (`prompthub worker`, or the one `prompthub serve` starts);
    #: celery: Celery workers take "run job X" messages from the broker; the job row stays the truth
    executor: Literal["local", "celery"] = "local"
    #: the Celery broker: RabbitMQ (amqp://) or Redis (redis://)
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    #: the queue a Celery worker consumes (`<celery_queue_prefix>-cpu` / `-gpu`); unset: gpu when
    #: the worker's device is cuda, else cpu
    device_class: Literal["cpu", "gpu"] | None = None
    #: queue names are `<prefix>-<device class>` (tests use their own prefix on a shared broker)
    celery_queue_prefix: str = "prompthub"
    #: a job whose worker process dies this many times (SIGKILL, OOM) ends failed (celery executor)
    max_worker_kills: int = 3

    # --- backbone runtime and precision (issue 14; README "Runtimes and precision") ---
    #: the frozen backbone's layer loop in inference: torch (eager), compile (torch.compile'd at
    #: start-up, any supported architecture) or onnx (ONNX Runtime; BERT family, CPU)
    runtime: Literal["torch", "compile", "onnx"] = "torch"
    #: fp32 | int8 (onnx only) | bf16 | fp16 (torch only, e.g. on a GPU); heads always run fp32
    precision: Literal["fp32", "int8", "bf16", "fp16"] = "fp32"
    #: where the ONNX graphs are built once per backbone identity, export version and precision
    onnx_cache_dir: str = "var/onnx"
    #: int8 leaves each feed-forward output projection in fp32 (its input, the GELU output, has the
    #: widest range). Off by default: quantizing it too gives 2.0-2.3x the transformers forward in
    #: the 64-task mixed batch against 1.5-1.65x kept (bench/results/engines-int8.md), and the shipped
    #: tasks stay within 0.23 points of fp32 (bench/results/precision*.md). A prefix trained in fp32
    #: for QA lost 1.7 SQuAD F1 with it quantized and gained 0.3 with it kept: turn it on for such
    #: tasks, and train versions for the graph served (the training option precision: int8)
    int8_keep_ffn_out_fp32: bool = False
    #: a task whose version records another precision than the server's (e.g. a prefix trained in
    #: fp32 on an int8 server): "refuse" answers 409; "warn" serves it, logs it and lists it in /readyz
    precision_mismatch: Literal["refuse", "warn"] = "refuse"
    #: pad every forward's length to a multiple of this (static shapes a GPU reuses); unset: 16 on
    #: a GPU, 1 (no extra padding) on a CPU
    pad_length_multiple: int | None = None

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, v: str) -> str:
        if not [d for d in (p.strip() for p in v.split(",")) if d]:
            raise ValueError("devices: give at least one device, e.g. 'cpu' or 'cuda:0,cuda:1'")
        return v

    @field_validator("device_class", mode="before")
    @classmethod
    def _device_class(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip().lower()
            return v or None
        return v

    @field_validator("celery_queue_prefix")
    @classmethod
    def _queue_prefix(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}", v):
            raise ValueError("celery_queue_prefix: letters, digits, '.', '_' and '-' only (1-101 characters)")
        return v

    @field_validator(
        "text_overflow",
        "on_crash",
        "log_level",
        "auth",
        "log_format",
        "executor",
        "runtime",
        "precision",
        mode="before",
    )
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator(
        "max_body_bytes",
        "max_inputs_per_request",
        "max_text_chars",
        "max_upload_bytes",
        "max_dataset_rows",
        "max_queued_jobs",
        "max_running_jobs",
        "max_queue_rows",
        "max_labels",
        "max_worker_kills",
    )
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("limits must be at least 1")
        return v

    @field_validator("job_max_memory_mb")
    @classmethod
    def _not_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be 0 (no budget) or more")
        return v

    @model_validator(mode="after")
    def _check_runtime(self) -> Settings:
        if self.runtime == "onnx" and self.precision not in ("fp32", "int8"):
            raise ValueError(f"precision {self.precision!r} needs runtime torch (onnx runs fp32 or int8)")
        if self.runtime in ("torch", "compile") and self.precision == "int8":
            raise ValueError("precision int8 needs runtime onnx (PROMPTHUB_RUNTIME=onnx)")
        return self

    @property
    def loopback(self) -> bool:
        """True when the server is bound to a loopback address only (127.0.0.0/8, ::1, localhost)."""
        return is_loopback(self.host)

    @property
    def keys_required(self) -> bool:
        """Whether requests must carry an API key: always with auth=required, and with auth=auto on any
        address but loopback. auth=off on a non-loopback address is refused by `check_auth`."""
        return self.auth == "required" or (self.auth == "auto" and not self.loopback)

    def check_auth(self) -> None:
        if self.auth == "off" and not self.loopback:
            raise ValueError(
                f"PROMPTHUB_AUTH=off is not allowed when bound to {self.host!r}: "
                "API keys are required on any address but 127.0.0.1/localhost/::1"
            )

    @property
    def device_list(self) -> list[str]:
        return [d.strip() for d in self.devices.split(",") if d.strip()]


def is_loopback(host: str | None) -> bool:
    import ipaddress

    h = (host or "").strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
