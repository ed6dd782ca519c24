"""Which store backend the settings name: the local folder (`store_dir`, `data_dir`; the default) or
S3-compatible object storage (`store_url=s3://bucket/prefix`, read cache in `store_cache_dir`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from app.store.datasets import DatasetFiles
from app.store.prompts import PromptStore

if TYPE_CHECKING:
    from app.store.s3 import S3PromptStore

#: either backend of the prompt store (the same methods)
Store = Union[PromptStore, "S3PromptStore"]


def _objects(settings: Any) -> Any:
    from app.store.s3_objects import S3Objects, parse_store_url

    bucket, prefix = parse_store_url(settings.store_url)
    return S3Objects(bucket, prefix)


def open_store(settings: Any) -> Store:
    """The prompt store the settings name (checkpoints and their sidecars)."""
    if not settings.store_url:
        return PromptStore(settings.store_dir)
    from app.store.s3 import S3PromptStore

    return S3PromptStore(_objects(settings), settings.store_cache_dir, settings.store_cache_bytes)


def open_datasets(settings: Any, store: Store | None = None) -> DatasetFiles:
    """The uploaded datasets' files, in the same backend as the prompt store."""
    if not settings.store_url:
        return DatasetFiles(settings.data_dir)
    from app.store.s3_datasets import S3DatasetFiles

    objects = getattr(store, "objects", None) or _objects(settings)
    return S3DatasetFiles(objects, settings.store_cache_dir)
