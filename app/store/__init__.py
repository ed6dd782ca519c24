"""Bytes only: the prompt store (versions and their sidecars) and the uploaded dataset files.
No SQL here; app.versions is where the store and the database meet. Two backends with one
interface: the local folder (PromptStore, DatasetFiles) and S3-compatible object storage
(app.store.s3); `open_store` / `open_datasets` pick one from the settings (`store_url`)."""

from app.store.backends import Store, open_datasets, open_store
from app.store.datasets import DatasetFiles, StoredDataset, UploadTooLarge
from app.store.prompts import (
    QUARANTINE,
    PromptStore,
    ScannedVersion,
    StoredFile,
    StoreError,
    StoreUnavailable,
    VersionTaken,
    temp_files,
    version_filename,
)
from app.store.sidecar import read_sidecar, write_sidecar

__all__ = [
    "QUARANTINE",
    "DatasetFiles",
    "PromptStore",
    "ScannedVersion",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredDataset",
    "StoredFile",
    "UploadTooLarge",
    "VersionTaken",
    "read_sidecar",
    "temp_files",
    "version_filename",
    "open_datasets",
    "open_store",
    "write_sidecar",
]
