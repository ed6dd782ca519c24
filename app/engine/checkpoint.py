"""Checkpoints: one safetensors file a task version, never pickle.

Tensors: `prefix.kv` [n_layers_with_prefix, 2, P, kv] (the folded prefix, only the layers that
carry one), `prompt.embeddings` [Pi, H] for shallow prompt tuning, `head.*` for the head, and
`finetuned.*` (the whole encoder) for the full fine-tuning baseline. The safetensors header's
metadata holds `prompthub`: a JSON document with the task spec, the backbone identity (name,
sha256 of its config and of its weights), the training config, metrics, data source.

Writes are atomic (temp file in the same folder, fsync, rename, fsync of the folder). Loading
checks the sha256 when one is expected and refuses a backbone mismatch with a clear error.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from app.engine import tasks
from app.engine.backbone import Backbone
from app.engine.model import ServingTask, TaskSpec, spread_layers

FORMAT = "prompthub-checkpoint"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 10 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt, or of another format."""


class BackboneMismatchError(CheckpointError):
    """A checkpoint was trained on another backbone than the one it is loaded onto."""


class PrecisionMismatchError(BackboneMismatchError):
    """A task version was trained against another backbone precision than the server runs."""


def weights_precision(backbone: Backbone) -> str:
    """fp32, bf16 or fp16: the dtype of the backbone's weights (training always runs torch)."""
    dtype = next(backbone.model.parameters()).dtype
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


#: the one metadata dict per recorded precision that tasks loaded without their metadata share
_PRECISION_META = {p: {"precision": p} for p in ("fp32", "int8", "bf16", "fp16")}


def recorded_precision(task: ServingTask) -> str:
    """The precision a loaded task's version was trained for (fp32 when it records none)."""
    return str(task.meta.get("precision") or "fp32")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_bytes(task: ServingTask, backbone: Backbone, meta: dict | None = None) -> bytes:
    """Serialise a served task into safetensors bytes with its metadata."""
    tensors: dict[str, torch.Tensor] = {}
    if task.kv is not None:
        layers = task.layer_mask.nonzero().flatten()
        tensors["prefix.kv"] = task.kv[layers].detach().float().cpu().contiguous()
    if task.prompt is not None:
        tensors["prompt.embeddings"] = task.prompt.detach().float().cpu().contiguous()
    for name, t in task.head.state_dict().items():
        tensors[f"head.{name}"] = t.detach().float().cpu().contiguous()
    if task.finetuned is not None:
        for name, t in task.finetuned.model.state_dict().items():
            tensors[f"finetuned.{name}"] = t.detach().cpu().contiguous().clone()
    doc = dict(meta or {})
    doc["spec"] = task.spec.to_dict()
    doc["backbone"] = backbone.identity.as_dict()
    # the backbone precision the prompt was trained (or re-tuned) against: a server running another
    # precision refuses it unless told otherwise (app.serving.hub, PROMPTHUB_PRECISION_MISMATCH)
    doc.setdefault("precision", weights_precision(backbone))
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "prompthub": json.dumps(doc)}
    return st_save(tensors, metadata=header)


def write_temp(path: str | Path, data: bytes) -> Path:
    """`data` in a new temp file beside `path` (same folder, so a rename or link is atomic), flushed
    to disk; the caller moves it into place or removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename or link in it) to disk."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def save_checkpoint(task: ServingTask, path: str | Path, backbone: Backbone, meta: dict | None = None) -> str:
    """Write the checkpoint atomically; returns the file's sha256."""
    data = checkpoint_bytes(task, backbone, meta)
    atomic_write(path, data)
    return sha256_bytes(data)


def parse_header(data: bytes) -> dict:
    """The `prompthub` metadata document of a checkpoint, from its bytes."""
    if len(data) < 8:
        raise CheckpointError("not a safetensors file: too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise CheckpointError("not a safetensors file: bad header length")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError("not a safetensors file: header is not JSON") from e
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"not a PromptHub checkpoint (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {meta['format_version']} is newer than this software"
        )
    try:
        return json.loads(meta["prompthub"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError("checkpoint metadata is missing or not JSON") from e


def read_metadata(path: str | Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: bad header length")
        return parse_header(head + f.read(n))


def check_backbone(doc: dict, backbone: Backbone, where: str = "checkpoint") -> None:
    want = doc.get("backbone") or {}
    have = backbone.identity
    if not have.matches(want):
        raise BackboneMismatchError(
            f"{where} was trained on backbone {want.get('name')!r} "
            f"(weights sha256 {str(want.get('weights_sha256'))[:12]}…), but the loaded backbone is "
            f"{have.name!r} (weights sha256 {have.weights_sha256[:12]}…): load it with the backbone it was trained on"
        )


@functools.lru_cache(maxsize=256)
def _layer_mask(num_layers: int, layers: tuple[int, ...]) -> torch.Tensor:
    """One read-only [num_layers] bool mask per layer choice, shared by every task loaded with it
    (a server caches thousands of tasks; most share one of a few layer choices)."""
    mask = torch.zeros(num_layers, dtype=torch.bool)
    mask[list(layers)] = True
    return mask


def load_checkpoint_bytes(
    data: bytes,
    backbone: Backbone,
    *,
    expected_sha256: str | None = None,
    where: str = "checkpoint",
    keep_meta: bool = True,
    frozen_head: bool = False,
) -> ServingTask:
    """A served task from checkpoint bytes. For the server's cache, which holds thousands:
    keep_meta=False drops the metadata document (it is in the database and the sidecar already;
    parsed, it is several kB of Python objects a task) and frozen_head=True keeps the head as
    bare tensors (heads.FrozenHead) instead of nn.Modules."""
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise CheckpointError(
            f"{where}: sha256 does not match the recorded one; the file is corrupt or was replaced"
        )
    doc = parse_header(data)
    check_backbone(doc, backbone, where)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{where}: unreadable tensors: {e}") from e
    spec = TaskSpec.from_dict(doc["spec"])
    try:
        task_type = tasks.get(spec.task_type)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    head_state = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    try:
        if frozen_head:  # bare tensors straight from the file: no nn.Module built only to be dropped
            head = task_type.frozen_head(spec, backbone, head_state)
        else:
            head = task_type.build_head(spec, backbone)
            head.load_state_dict(head_state, strict=True)
            head.eval()
            for p in head.parameters():
                p.requires_grad_(False)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{where}: head weights do not fit the spec: {e}") from e
    precision = str(doc.get("precision") or "fp32")
    slim = _PRECISION_META.get(precision) or {"precision": precision}
    task = ServingTask(spec=spec, head=head, meta=doc if keep_meta else slim)
    if "prefix.kv" in tensors:
        flat = tensors["prefix.kv"]
        if flat.shape[0] != len(spec.layers) or flat.shape[3] != backbone.kv_size:
            raise CheckpointError(f"{where}: prefix shape {tuple(flat.shape)} does not fit the spec")
        task.kv = spread_layers(flat, spec.layers, backbone.num_layers)
        task.layer_mask = _layer_mask(backbone.num_layers, tuple(spec.layers))
    if "prompt.embeddings" in tensors:
        task.prompt = tensors["prompt.embeddings"]
    ft = {k[len("finetuned.") :]: v for k, v in tensors.items() if k.startswith("finetuned.")}
    if ft:
        clone = copy.deepcopy(backbone)
        clone.model.load_state_dict(ft, strict=True)
        clone.eval()
        task.finetuned = clone
    return task.to(backbone.device)


def load_checkpoint(
    path: str | Path, backbone: Backbone, *, expected_sha256: str | None = None
) -> ServingTask:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    return load_checkpoint_bytes(
        path.read_bytes(), backbone, expected_sha256=expected_sha256, where=str(path)
    )
