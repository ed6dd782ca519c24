"""The serving benchmark's prompt store: N synthetic P-Tuning v2 tasks, a head-only `bare`
task and a few cold ones, written to a store folder and registered in a SQLite database."""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import median

NUM_LABELS = 4


def task_name(i: int) -> str:
    return f"t{i:05d}"


def build_store(root: Path, backbone, n_tasks: int, n_cold: int, prefix_length: int, seed: int = 0) -> dict:
    """Synthetic tasks written straight into a store folder and registered in a SQLite DB.

    Each task has its own random K/V and head (no shared files: the disk and memory figures are
    real). Each is published the way the worker publishes a trained task (app.versions.publish)."""
    import torch

    from app import versions
    from app.db.session import get_sessionmaker, run_migrations
    from app.engine.checkpoint import checkpoint_bytes
    from app.engine.heads import build_head
    from app.engine.model import ServingTask, TaskSpec
    from app.store import PromptStore

    store = root / "store"
    url = f"sqlite:///{root / 'hub.db'}"
    run_migrations(url)
    maker = get_sessionmaker(url)
    labels = [f"l{i}" for i in range(NUM_LABELS)]
    spec = TaskSpec(task_type="classification", labels=labels, prefix_length=prefix_length).validate(
        backbone.num_layers
    )
    head = build_head(spec, backbone).eval()
    layer_mask = torch.ones(backbone.num_layers, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    names = [task_name(i) for i in range(n_tasks)] + [f"c{i:04d}" for i in range(n_cold)] + ["bare"]
    sizes: dict[str, int] = {}
    t0 = time.perf_counter()
    with maker() as s:
        for name in names:
            with torch.no_grad():
                head.classifier.weight.normal_(0, 0.05, generator=g)
                head.classifier.bias.zero_()
            kv = None
            if name != "bare":
                kv = torch.randn(backbone.num_layers, 2, prefix_length, backbone.kv_size, generator=g) * 0.5
            task = ServingTask(spec=spec, head=head, kv=kv, layer_mask=layer_mask if kv is not None else None)
            data = checkpoint_bytes(task, backbone, {"source": "bench", "metrics": {}, "training": {}})
            versions.publish(s, PromptStore(store), name, data, source="bench")
            sizes[name] = len(data)
    disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return {
        "url": url,
        "store": str(store),
        "names": names,
        "setup_s": time.perf_counter() - t0,
        "checkpoint_bytes": sizes[task_name(0)] if n_tasks else None,
        "bare_checkpoint_bytes": sizes["bare"],
        "store_disk_bytes": disk,
    }


def device_bytes(backbone, store: Path, name: str) -> dict:
    """Bytes of one loaded task (ServingTask.nbytes: K/V + head) and the cold-load time in process."""
    from app.engine.checkpoint import load_checkpoint_bytes, sha256_bytes

    path = store / name / "v0001.safetensors"
    data = path.read_bytes()
    sha = sha256_bytes(data)
    times = []
    task = None
    for _ in range(30):
        t0 = time.perf_counter()
        data = path.read_bytes()
        task = load_checkpoint_bytes(data, backbone, expected_sha256=sha)
        times.append(time.perf_counter() - t0)
    kv = task.kv.numel() * task.kv.element_size()
    return {
        "nbytes": task.nbytes(),
        "kv_bytes": kv,
        "head_bytes": task.nbytes() - kv,
        "load_ms_in_process": median(times) * 1000,
    }
