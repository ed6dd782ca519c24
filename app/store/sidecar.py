"""The JSON sidecar next to each stored version: sha256, size and the checkpoint's metadata, for
humans and for recovery. Written in one place, by version writes and by repairs alike."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from app.engine.checkpoint import atomic_write


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def write_sidecar(
    checkpoint: Path,
    *,
    task: str,
    version: int,
    sha256: str,
    size_bytes: int,
    metadata: dict[str, Any] | None,
    **extra: Any,
) -> Path:
    """Write (atomically) the sidecar of `checkpoint`; `extra` keys are added (e.g. rewritten_by)."""
    doc = sidecar_bytes(
        checkpoint.name,
        task=task,
        version=version,
        sha256=sha256,
        size_bytes=size_bytes,
        metadata=metadata,
        **extra,
    )
    path = sidecar_path(checkpoint)
    atomic_write(path, doc)
    return path


def sidecar_bytes(
    filename: str,
    *,
    task: str,
    version: int,
    sha256: str,
    size_bytes: int,
    metadata: dict[str, Any] | None,
    **extra: Any,
) -> bytes:
    """The sidecar document of the checkpoint `filename` (the same for every store backend)."""
    doc = {
        "task": task,
        "version": version,
        "file": filename,
        "sha256": sha256,
        "size_bytes": size_bytes,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metadata": metadata or {},
        **extra,
    }
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()


def parse_sidecar(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def read_sidecar(checkpoint: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(sidecar_path(checkpoint).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
