"""The serving benchmark's prompt store: N synthetic P-Tuning v2 tasks, a head-only `bare`
task and a few cold ones, written to a store folder and registered in a SQLite database."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import median

NUM_LABELS = 4


def task_name(i: int) -> str:
    return f"t{i:05d}"


def build_store(root: Path, backbone, n_tasks: int, n_cold: int, prefix_length: int, seed: int = 0) -> dict:
    """Synthetic tasks written straight into a store folder and registered in a SQLite DB.

    Each task has its own random K/V and head (no shared files: the disk and memory figures are
    real). Files are written without the store's per-file fsync (bounded set-up time)."""
    import torch

    from app.db.session import get_sessionmaker, run_migrations
    from app.engine.checkpoint import checkpoint_bytes
    from app.engine.heads import build_head
    from app.engine.model import ServingTask, TaskSpec

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
        for k, name in enumerate(names):
            with torch.no_grad():
                head.classifier.weight.normal_(0, 0.05, generator=g)
                head.classifier.bias.zero_()
            kv = None
            if name != "bare":
                kv = torch.randn(backbone.num_layers, 2, prefix_length, backbone.kv_size, generator=g) * 0.5
            task = ServingTask(spec=spec, head=head, kv=kv, layer_mask=layer_mask if kv is not None else None)
            data = checkpoint_bytes(task, backbone, {"source": "bench", "metrics": {}, "training": {}})
            publish(s, store, name, data, spec)
            sizes[name] = len(data)
            if k % 500 == 499:
                s.commit()
        s.commit()
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


def publish(session, store: Path, name: str, blob: bytes, spec) -> None:
    """Version 1 of a synthetic task: checkpoint and sidecar in the store folder, then its active
    database row (the caller commits). The one place the serving bench publishes a task."""
    from app.db import repo
    from app.engine.checkpoint import sha256_bytes

    digest = sha256_bytes(blob)
    d = store / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "v0001.safetensors").write_bytes(blob)  # no per-file fsync: bounded set-up time
    sidecar = {
        "task": name,
        "version": 1,
        "file": "v0001.safetensors",
        "sha256": digest,
        "size_bytes": len(blob),
        "metadata": {"source": "bench"},
    }
    (d / "v0001.json").write_text(json.dumps(sidecar) + "\n")
    repo.add_version(
        session,
        name=name,
        task_type=spec.task_type,
        labels=spec.labels,
        file=f"{name}/v0001.safetensors",
        sha256=digest,
        size_bytes=len(blob),
        spec=spec.to_dict(),
        metrics={},
        training={},
        source="bench",
        activate=True,
        version=1,
    )


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
