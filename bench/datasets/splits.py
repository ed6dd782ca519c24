"""Prepared splits in the cache: prepare (fetch, verify, convert, manifest) and load_split."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.datasets import sources
from bench.datasets.readers import Record
from bench.datasets.registry import DatasetInfo, _info
from bench.datasets.sources import DatasetError, Progress

#: Bump when a converter changes its output: prepared data with another version is rebuilt.
FORMAT_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_CACHE_DIR = "PROMPTHUB_DATA_DIR"


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "datasets"


def _cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def dataset_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    _info(name)
    return _cache(cache_dir) / name


# --------------------------------------------------------------------------- prepare / load


def read_manifest(name: str, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    path = dataset_dir(name, cache_dir) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_prepared(name: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when the manifest matches this module's format and source and every split file exists."""
    info = _info(name)
    manifest = read_manifest(name, cache_dir)
    if manifest is None:
        return False
    ddir = dataset_dir(name, cache_dir)
    return (
        manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("source", {}).get("sha256") == info.source.sha256
        and set(manifest.get("counts", {})) == set(info.splits)
        and all((ddir / f"{s}.jsonl").is_file() for s in info.splits)
    )


def _split_paths(info: DatasetInfo, ddir: Path) -> dict[str, Path]:
    return {s: ddir / f"{s}.jsonl" for s in info.splits}


def _write_jsonl(path: Path, records: Iterable[Record]) -> str:
    """Write records atomically; return the file's sha256."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for rec in records:
                line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
                digest.update(line)
                fh.write(line)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def prepare(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress = print,
    force: bool = False,
) -> dict[str, Path]:
    """Fetch, verify and convert dataset ``name``; return ``{split: path to its JSONL}``.

    Idempotent: when the prepared files and a matching ``manifest.json`` exist, nothing is
    downloaded or rewritten (``force=True`` rebuilds from the verified download).
    """
    info = _info(name)
    root = _cache(cache_dir)
    ddir = root / name
    paths = _split_paths(info, ddir)
    if not force and is_prepared(name, root):
        progress(f"[datasets] {name}: already prepared in {ddir}")
        return paths

    archive = sources.fetch(info.source, root / "downloads", progress)
    progress(f"[datasets] {name}: converting {info.source.filename} ...")
    result = info.builder(archive)
    if set(result.splits) != set(info.splits):
        raise DatasetError(
            f"{name}: builder produced splits {sorted(result.splits)}, expected {list(info.splits)}"
        )

    ddir.mkdir(parents=True, exist_ok=True)
    (ddir / "manifest.json").unlink(missing_ok=True)  # invalid until everything is written
    files: dict[str, dict[str, Any]] = {}
    for split in info.splits:
        records = result.splits[split]
        if not records:
            raise DatasetError(f"{name}: split {split!r} is empty")
        digest = _write_jsonl(paths[split], records)
        files[split] = {"path": paths[split].name, "count": len(records), "sha256": digest}
        progress(f"[datasets] {name}: {split} {len(records)} records -> {paths[split]}")

    manifest: dict[str, Any] = {
        "dataset": name,
        "format_version": FORMAT_VERSION,
        "task_type": info.task_type,
        "description": info.description,
        "source": {**info.source.as_dict(), "members": list(info.members)},
        "license": info.license,
        "redistributable": info.redistributable,
        "labels_source": info.labels,
        "split_definition": info.split_definition,
        "counts": {s: files[s]["count"] for s in info.splits},
        "files": files,
        "num_labels": len(result.labels) if result.labels is not None else None,
        "labels": result.labels,
        "label_counts": result.label_counts,
        **({"details": result.extra} if result.extra else {}),
    }
    tmp = ddir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, ddir / "manifest.json")
    progress(f"[datasets] {name}: done ({', '.join(f'{s}={c}' for s, c in manifest['counts'].items())})")
    return paths


def load_split(
    name: str,
    split: str,
    limit: int | None = None,
    seed: int | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[Record]:
    """Read a prepared split.

    ``limit`` keeps at most that many records: the first ``limit`` when ``seed`` is None,
    otherwise a ``random.Random(seed)`` sample of that size, returned in file order (the
    same ``seed`` always gives the same subset).
    """
    info = _info(name)
    if split not in info.splits:
        raise KeyError(f"{name} has no split {split!r}; it has {list(info.splits)}")
    path = dataset_dir(name, cache_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `python -m bench.datasets prepare {name}` first")
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    if limit is None or limit >= len(records):
        return records
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if seed is None:
        return records[:limit]
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]
