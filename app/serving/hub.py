"""The serving hub: settings, device cache, backbones and batcher.

The hub knows no database and no store: it is given two functions (wired in app.main):

    resolve(name, version | None) -> (number, sha256)   raises TaskNotFound
    read(name, number, sha256) -> bytes                  the checkpoint, checked against its sha256

`Hub.predict` resolves the task's version on every request, so a version written by the worker
process (or activated through the API) is served at once, with no restart; the loaded task is
then held by the request until its rows are done. On PostgreSQL the resolve function is cached
(app.serving.versions_cache: invalidated by LISTEN/NOTIFY, with a short TTL), so a warm replica
asks the database nothing per prediction; `Hub.invalidate` forgets its entries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.config import Settings
from app.engine import embed as E
from app.engine.backbone import Backbone, load_backbone
from app.engine.checkpoint import PrecisionMismatchError, load_checkpoint_bytes, recorded_precision
from app.engine.data import DataError
from app.engine.model import ServingTask
from app.engine.predict import Prepared, finish, prepare
from app.serving.admission import Admission, input_chars
from app.serving.batcher import Batcher
from app.serving.cache import PrefixCache

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or a no-op elsewhere.

    Loading a task allocates its file bytes and a transient copy of its K/V next to the K/V that
    stays cached. glibc serves ~300 kB blocks from the heap once its dynamic mmap threshold has
    grown, and the freed transients leave holes between long-lived prefixes: measured here, 470-540
    kB of RSS per cached task (0.3 MB of tensors) with 1 to 4 loader threads, 316 kB with a trim
    after each load. The trim returns the freed pages to the OS; it runs only on a cache miss.
    """
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        fn = None
    if fn is None:
        return lambda: None
    return lambda: fn(0) and None


_release_freed_memory = _malloc_trim()


class TaskNotFound(LookupError):
    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        what = f"task {name!r}" if version is None else f"version {version} of task {name!r}"
        super().__init__(f"{what} not found")


class NotReady(RuntimeError):
    """The backbone is still loading (or failed to load)."""


class PredictTimeout(TimeoutError):
    """A prediction was not answered within `predict_timeout_s` (the server is overloaded or stuck)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(
            f"the prediction was not answered within {seconds:g} s (PROMPTHUB_PREDICT_TIMEOUT_S): "
            "the server is overloaded; retry later"
        )


@dataclass(frozen=True)
class Embedded:
    """One request's embeddings: the vectors (float32, CPU), the tokens read, the task (None:
    plain embeddings of the backbone) and its served version."""

    vectors: list
    tokens: int
    task: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class Resolved:
    name: str
    version: int
    sha256: str
    task: ServingTask


ResolveFn = Callable[[str, int | None], tuple[int, str]]
ReadFn = Callable[[str, int, str], bytes]


class Hub:
    def __init__(
        self,
        settings: Settings,
        *,
        resolve: ResolveFn,
        read: ReadFn,
        backbones: Sequence[Backbone] | None = None,
        cache: PrefixCache | None = None,
    ) -> None:
        self.settings = settings
        self._resolve = resolve
        self._read = read
        self.cache = cache or PrefixCache(settings.cache_bytes)
        self.backbones: list[Backbone] | None = list(backbones) if backbones else None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()
        self._loader: threading.Thread | None = None
        self._tok_lock = threading.Lock()  # fast tokenizers must not be called concurrently
        # the tokenising and forward work admitted, per key and in all (app.serving.admission)
        self.admission = Admission(settings.max_inflight_chars_per_key, settings.max_inflight_chars)
        # Batcher length bucketing: the fixed cost of one more forward in padded tokens
        # (None: by device; float("inf"): never split a batch). See Batcher.
        self.bucket_overhead_tokens: float | None = settings.bucket_overhead_tokens
        # embedding rows without a task: one shared object, so such rows of all requests pool together
        self._plain_task = E.plain_task()
        # versions served although trained for another precision (PROMPTHUB_PRECISION_MISMATCH=warn)
        self.precision_mismatches: dict[tuple[str, int], dict] = {}

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def backbone(self) -> Backbone:
        if not self.backbones:
            raise NotReady("the backbone is still loading")
        return self.backbones[0]

    def start(self, background: bool = True) -> None:
        """Load the backbones (one per device) unless given, then start the batcher."""
        if self.backbones is not None:
            for bb in self.backbones:
                self._configure_backbone(bb)
            self._start_batcher()
            return
        if background:
            self._loader = threading.Thread(target=self._load, name="backbone-loader", daemon=True)
            self._loader.start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            if self.settings.torch_threads:
                import torch

                torch.set_num_threads(self.settings.torch_threads)
            backbones = [load_backbone(self.settings.backbone, device=d) for d in self.settings.device_list]
            for bb in backbones:
                bb.identity  # noqa: B018 - hash the weights now, not on the first request
                self._configure_backbone(bb)
            self.backbones = backbones
            self._start_batcher()
            log.info("backbone %s ready on %s", backbones[0].name, ", ".join(self.settings.device_list))
        except Exception as exc:  # reported by /readyz
            log.exception("backbone failed to load")
            self.load_error = f"{type(exc).__name__}: {exc}"

    def _configure_backbone(self, bb: Backbone) -> None:
        """The runtime and precision of the settings (PROMPTHUB_RUNTIME, PROMPTHUB_PRECISION). The
        identity is hashed first: it names the fp32 weights that checkpoints record."""
        s = self.settings
        bb.pack_tokens = s.pack_tokens
        if (bb.runtime is not None and bb.runtime.precision == s.precision) or (
            s.runtime == "torch" and bb.precision == s.precision
        ):
            return
        bb.identity  # noqa: B018
        if s.runtime == "onnx":
            if bb.device.type != "cpu":
                raise RuntimeError(f"runtime onnx runs on the CPU; device {bb.device} needs runtime torch")
            from app.engine.onnx_runtime import attach

            runner = attach(
                bb,
                s.precision,
                s.onnx_cache_dir,
                threads=s.torch_threads,
                keep_ffn_out_fp32=s.int8_keep_ffn_out_fp32,
            )
            log.info("backbone %s: onnx runtime %s (%s)", bb.name, s.precision, runner.path)
            return
        if s.precision in ("bf16", "fp16"):
            import torch

            bb.model.to(torch.bfloat16 if s.precision == "bf16" else torch.float16)
            log.info("backbone %s: torch %s weights and activations, fp32 heads", bb.name, s.precision)
        if s.runtime == "compile":
            from app.engine.compiled_runtime import attach as attach_compiled

            attach_compiled(bb)  # compiles now (logs the seconds), not on the first request

    def runtime_info(self) -> dict:
        """What /readyz reports about the backbone's runtime and precision mismatches served."""
        bb = self.backbone
        path = getattr(bb.runtime, "path", None)
        return {
            "runtime": self.settings.runtime,
            "precision": bb.precision,
            "onnx_file": path.name if path is not None else None,
            "precision_mismatch": self.settings.precision_mismatch,
            "mismatched_versions_served": list(self.precision_mismatches.values())[:100],
        }

    def _check_precision(self, name: str, number: int, task: ServingTask) -> None:
        """Refuse (or, with PROMPTHUB_PRECISION_MISMATCH=warn, log once and list in /readyz) a
        version trained for another backbone precision than the server runs."""
        want, have = self.backbone.precision, recorded_precision(task)
        if have == want:
            return
        if self.settings.precision_mismatch == "refuse":
            fix = (
                "Train it for int8 (the training option precision: int8, which a worker with "
                "PROMPTHUB_PRECISION=int8 uses by default), or set"
                if want == "int8"
                else "Set"
            )
            raise PrecisionMismatchError(
                f"version {number} of task {name!r} was trained for a {have} backbone and this server "
                f"runs {want} (PROMPTHUB_PRECISION): its accuracy there is unmeasured. {fix} "
                "PROMPTHUB_PRECISION_MISMATCH=warn to serve it anyway"
            )
        key = (name, number)
        if key not in self.precision_mismatches and len(self.precision_mismatches) < 10_000:
            log.warning(
                "serving version %d of task %r trained for a %s backbone on %s (PROMPTHUB_PRECISION_MISMATCH=warn)",
                number,
                name,
                have,
                want,
            )
            self.precision_mismatches[key] = {
                "task": name,
                "version": number,
                "trained_for": have,
                "served": want,
            }

    def _start_batcher(self) -> None:
        assert self.backbones
        self.batcher = Batcher(
            self.backbones,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue_rows=self.settings.max_queue_rows,
            bucket_overhead_tokens=self.bucket_overhead_tokens,
            max_batch_tokens=self._max_batch_tokens(),
            pad_length_multiple=self.settings.pad_length_multiple,
        ).start()
        self._ready.set()

    def _max_batch_tokens(self) -> int | None:
        """The setting, or by device: on a CPU a forward's time grows with its tokens (~0.7 ms a
        token for MiniLM here), so 1,024 tokens bound what a short request waits behind; a GPU's
        forward is launch-bound, so no cap there unless set."""
        if self.settings.max_batch_tokens is not None:
            return self.settings.max_batch_tokens or None
        assert self.backbones
        return 1024 if self.backbones[0].device.type == "cpu" else None

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None
        self._ready.clear()

    # ------------------------------------------------------------------ resolving
    def invalidate(self, name: str | None = None) -> None:
        """Forget the cached version lookups of `name` (None: all), when the resolve function
        given caches (app.serving.versions_cache.CachedResolver); otherwise nothing to do."""
        invalidate = getattr(self._resolve, "invalidate", None)
        if invalidate is not None:
            invalidate(name)

    def resolve(self, name: str, version: int | None = None) -> Resolved:
        """The task version to serve (the active one unless `version`), loaded through the cache."""
        number, sha = self._resolve(name, version)
        backbone = self.backbone

        def load() -> ServingTask:
            data = self._read(name, number, sha)  # checked against sha256 there: not hashed twice
            task = load_checkpoint_bytes(
                data,
                backbone,
                where=f"task {name!r} version {number}",
                keep_meta=False,
                frozen_head=True,
            )
            del data
            _release_freed_memory()
            return task

        task = self.cache.get((name, number, sha), load)
        self._check_precision(name, number, task)
        return Resolved(name, number, sha, task)

    # ------------------------------------------------------------------ predicting
    def check_chars(self, records: Sequence[dict]) -> None:
        limit = self.settings.max_text_chars
        for i, record in enumerate(records):
            for field, value in record.items():
                n = len(value) if isinstance(value, str) else 0
                if isinstance(value, list):
                    n = sum(len(v) for v in value if isinstance(v, str))
                if n > limit:
                    raise DataError(
                        f"{n} characters long; the limit is {limit} characters",
                        line=i + 1,
                        field=field,
                    )

    def _prepare(
        self, name: str, version: int | None, records: list[dict], overflow: str | None = None
    ) -> tuple[Resolved, Prepared]:
        resolved = self.resolve(name, version)
        backbone = self.backbone
        with self._tok_lock:
            prepared = prepare(
                resolved.task,
                backbone.tokenizer,
                records,
                overflow=overflow or self.settings.text_overflow,
                backbone_max=backbone.max_positions,
            )
        return resolved, prepared

    async def predict(
        self,
        name: str,
        inputs: Sequence[str | dict],
        version: int | None = None,
        *,
        client: str | None = None,
        overflow: str | None = None,
    ) -> tuple[int, list[dict]]:
        """(served version, one prediction per input). `client`: the caller's key id (None: keyless),
        whose work in flight is bounded; `overflow`: "truncate" or "refuse" for over-long inputs
        (None: the server's setting). Raises TaskNotFound, DataError, QueueFull (Overloaded when
        the client or the server has too much work in flight), PredictTimeout."""
        if not self.ready or self.batcher is None:
            raise NotReady(self.load_error or "the backbone is still loading")
        records = [{"text": x} if isinstance(x, str) else dict(x) for x in inputs]
        self.check_chars(records)
        ticket = self.admission.acquire(client, input_chars(records))  # before any work is done
        try:
            timeout = self.settings.predict_timeout_s
            try:
                return await asyncio.wait_for(
                    self._predict(name, version, records, client, overflow), timeout
                )
            except TimeoutError:
                raise PredictTimeout(timeout) from None
        finally:
            ticket.release()

    async def _predict(
        self,
        name: str,
        version: int | None,
        records: list[dict],
        client: str | None,
        overflow: str | None = None,
    ) -> tuple[int, list[dict]]:
        batcher = self.batcher
        if batcher is None:
            raise NotReady(self.load_error or "the backbone is still loading")
        resolved, prepared = await asyncio.to_thread(self._prepare, name, version, records, overflow)
        future = batcher.submit([(resolved.task, f) for f in prepared.features], client)
        try:
            logits = await asyncio.wrap_future(future)
        finally:
            future.cancel()  # timed out or the client left: the batcher skips rows not yet run
        return resolved.version, finish(resolved.task, prepared, logits)

    # ------------------------------------------------------------------ embedding
    async def embed(
        self,
        texts: Sequence[str],
        task: str | None = None,
        version: int | None = None,
        *,
        normalize: bool = True,
        truncate: bool | None = None,
        client: str | None = None,
    ) -> Embedded:
        """Mean-pooled sentence embeddings of `texts` (app.engine.embed), through `task`'s prefix when
        given, as rows of the same batcher queue as predictions (same admission and timeout).
        `truncate`: cut inputs longer than the backbone takes (None: the server's text_overflow).
        Raises what predict raises, and ValueError for a task that cannot give embeddings."""
        if not self.ready or self.batcher is None:
            raise NotReady(self.load_error or "the backbone is still loading")
        records = [{"text": t} for t in texts]
        self.check_chars(records)
        ticket = self.admission.acquire(client, input_chars(records))
        try:
            timeout = self.settings.predict_timeout_s
            try:
                return await asyncio.wait_for(
                    self._embed(list(texts), task, version, normalize, truncate, client), timeout
                )
            except TimeoutError:
                raise PredictTimeout(timeout) from None
        finally:
            ticket.release()

    def _prepare_embed(
        self, texts: list[str], task: str | None, version: int | None, truncate: bool | None
    ) -> tuple[ServingTask, Resolved | None, list[dict]]:
        backbone = self.backbone
        resolved = None
        if task is None:
            row_task = self._plain_task
        else:
            resolved = self.resolve(task, version)
            row_task = E.conditioned_task(resolved.task)
        overflow = self.settings.text_overflow if truncate is None else ("truncate" if truncate else "refuse")
        limit = E.max_tokens(backbone, None if resolved is None else resolved.task)
        with self._tok_lock:
            features = E.encode(backbone.tokenizer, texts, limit, overflow=overflow)
        return row_task, resolved, features

    async def _embed(
        self,
        texts: list[str],
        task: str | None,
        version: int | None,
        normalize: bool,
        truncate: bool | None,
        client: str | None,
    ) -> Embedded:
        batcher = self.batcher
        if batcher is None:
            raise NotReady(self.load_error or "the backbone is still loading")
        row_task, resolved, features = await asyncio.to_thread(
            self._prepare_embed, texts, task, version, truncate
        )
        future = batcher.submit([(row_task, f) for f in features], client)
        try:
            pooled = await asyncio.wrap_future(future)
        finally:
            future.cancel()
        return Embedded(
            vectors=E.finish(pooled, normalize),
            tokens=sum(len(f["input_ids"]) for f in features),
            task=task,
            version=None if resolved is None else resolved.version,
        )
