"""PEFT interop: a task's prefix as a PEFT prefix-tuning adapter, and back (docs/peft.md).

An adapter folder holds PEFT's own two files and one of ours:

    adapter_config.json          PrefixTuningConfig (task_type FEATURE_EXTRACTION, no projection)
    adapter_model.safetensors    `prompt_embeddings` [P, num_layers * 2 * kv]: the materialised
                                 per-layer keys/values, in the layout PromptHub's flat prefix uses
                                 ([P, layer, key|value, kv]); optionally a modules_to_save copy of
                                 the position embeddings (below)
    prompthub_head.safetensors   the task's head (HEAD_FORMAT): its linear map as `weight`/`bias`
                                 under their head names, and in the metadata the task spec (type,
                                 labels, head) and where the head reads (`position`)

PEFT's prefix tuning differs from PromptHub's in two ways that change outputs:
- positions: PEFT hands the prefix to the model as a cache of P tokens, so BERT-family models
  number the real tokens P, P+1, ... (PromptHub: 0, 1, ...);
- segments: PEFT's feature-extraction model drops token_type_ids, so every token is segment 0.

Import keeps PEFT's behaviour (TaskSpec.position_offset = P, segment_ids = False), so an imported
task gives PEFT's outputs. Export of a task with PromptHub's numbering adds the backbone's position
embedding table shifted by P as a modules_to_save entry, so PEFT's tokens at P, P+1, ... read the
embeddings of 0, 1, ...: exact for inputs of up to max_positions - P tokens. What cannot be exact
is refused: prefixes on only some layers (PEFT puts one on every layer and a zero prefix is not
no prefix), shallow prompt tuning or full fine-tuning, backbones outside the BERT family, and
question answering with segment ids (its inputs are always pairs).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from app.engine import tasks
from app.engine.architectures import BERT_FAMILY
from app.engine.backbone import Backbone
from app.engine.model import ServingTask, SpecError, TaskSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_FILE = "prompthub_head.safetensors"
HEAD_FORMAT = "prompthub-peft-head"
PROMPT_KEY = "prompt_embeddings"
POSITIONS_MODULE = "embeddings.position_embeddings"
POSITIONS_KEY = f"base_model.{POSITIONS_MODULE}.weight"  # how PEFT names a modules_to_save entry
PEFT_VERSION = "0.21.2"  # the version whose format this writes (and whose loading the tests check)


class PeftError(ValueError):
    """An adapter folder that cannot be imported, or a task that cannot be exported exactly.
    ``part``: which file of the folder is at fault ("adapter_config", "adapter_model", "head")."""

    def __init__(self, message: str, part: str | None = None) -> None:
        super().__init__(message)
        self.part = part


# ------------------------------------------------------------------------------------ heads


def write_head(task: ServingTask, backbone: Backbone, path: str | Path) -> None:
    """The task's head and spec in HEAD_FORMAT (the third file of an exported adapter)."""
    kind = tasks.get(task.spec.task_type)
    lay = kind.head_layout(task.spec, backbone)
    state = task.head.state_dict()
    spec = {k: v for k, v in task.spec.to_dict().items() if k not in _PREFIX_FIELDS}
    meta = {
        "format": HEAD_FORMAT,
        "format_version": "1",
        "spec": json.dumps(spec),
        "weight": lay.weight,
        "bias": lay.bias,
        # where the head reads the last hidden states: a token index, or "tokens" for every token
        "position": "tokens" if lay.position is None else str(lay.position),
    }
    tensors = {n: state[n].detach().float().cpu().contiguous() for n in (lay.weight, lay.bias)}
    save_file(tensors, str(path), metadata=meta)


def read_head(path: str | Path) -> tuple[dict, dict[str, Tensor], dict[str, str]]:
    """(spec fields, head tensors, metadata) of a HEAD_FORMAT file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PeftError(
            f"{path.name} is missing: PromptHub needs the task's head beside the adapter "
            f"(a safetensors file in the {HEAD_FORMAT!r} format, see docs/peft.md)",
            "head",
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    except Exception as e:  # safetensors raises its own error types
        raise PeftError(f"{path.name}: not a readable safetensors file: {e}", "head") from e
    if meta.get("format") != HEAD_FORMAT:
        raise PeftError(f"{path.name}: not a PromptHub head file (format {meta.get('format')!r})", "head")
    try:
        spec = json.loads(meta["spec"])
    except (KeyError, json.JSONDecodeError) as e:
        raise PeftError(f"{path.name}: its metadata holds no task spec", "head") from e
    if not isinstance(spec, dict):
        raise PeftError(f"{path.name}: its task spec is not an object", "head")
    return spec, tensors, meta


def apply_head(path: str | Path, hidden: Tensor) -> Tensor:
    """Logits of a HEAD_FORMAT head over last hidden states [B, L, H] (e.g. a PeftModel's output):
    [B, C] for a head that reads one token, [B, L, C] for one that reads every token."""
    _, tensors, meta = read_head(path)
    weight, bias = tensors[meta["weight"]].to(hidden.dtype), tensors[meta["bias"]].to(hidden.dtype)
    h = hidden if meta["position"] == "tokens" else hidden[:, int(meta["position"])]
    return torch.nn.functional.linear(h, weight, bias)


# the fields an adapter itself defines on import (never taken from a head file)
_PREFIX_FIELDS = {"method", "prefix_length", "layers", "reparameterize", "position_offset", "segment_ids"}


# ------------------------------------------------------------------------------------ export


def _check_exportable(task: ServingTask, backbone: Backbone) -> None:
    spec = task.spec
    if backbone.model_type not in BERT_FAMILY:
        raise PeftError(
            f"PEFT export is for BERT-family backbones ({', '.join(sorted(BERT_FAMILY))}); "
            f"this one is {backbone.model_type!r}, whose prefix positions PEFT treats differently"
        )
    if spec.method != "p-tuning-v2" or task.kv is None or task.finetuned is not None:
        raise PeftError(f"only P-Tuning v2 prefixes export to PEFT prefix tuning (this task: {spec.method})")
    if task.layer_mask is not None and not bool(task.layer_mask.all()):
        layers = task.layer_mask.nonzero().flatten().tolist()
        raise PeftError(
            f"the task has prefixes at layers {layers} only; PEFT's prefix tuning puts one at every "
            "layer and a zero prefix is not the same as none, so the export would not be exact"
        )
    if spec.position_offset not in (0, spec.prefix_length):
        raise PeftError(f"position_offset {spec.position_offset} is neither 0 nor the prefix length")
    if spec.segment_ids and tasks.get(spec.task_type).always_pairs:
        raise PeftError(
            "question answering reads (question, context) pairs with segment ids, which PEFT's "
            "feature-extraction model drops: the export would not be exact"
        )
    if backbone.kv_size % backbone.num_heads:
        raise PeftError("the backbone's key/value size is not a multiple of its heads")


def export_adapter(
    task: ServingTask, backbone: Backbone, out_dir: str | Path, *, base_model: str | None = None
) -> Path:
    """Write `task` as a PEFT prefix-tuning adapter folder (plus its head) that
    `PeftModel.from_pretrained(AutoModel.from_pretrained(<backbone>), out_dir)` loads; its last
    hidden states, through the head file, give the task's logits. Raises PeftError for a task
    whose outputs PEFT would not reproduce."""
    _check_exportable(task, backbone)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = task.prefix_length
    kv = task.kv.detach().float().cpu()  # [num_layers, 2, P, kv]
    tensors = {PROMPT_KEY: kv.permute(2, 0, 1, 3).reshape(p, -1).contiguous()}
    modules_to_save = None
    if task.spec.position_offset == 0:  # PromptHub numbering: shift the table so PEFT reads 0, 1, ...
        table = backbone.model.embeddings.position_embeddings.weight.detach().float().cpu()
        shifted = table.clone()
        shifted[p:] = table[: table.shape[0] - p]
        tensors[POSITIONS_KEY] = shifted.contiguous()
        modules_to_save = [POSITIONS_MODULE]
    config = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "FEATURE_EXTRACTION",
        "num_virtual_tokens": p,
        "token_dim": backbone.kv_size,
        "num_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": backbone.kv_size,
        "prefix_projection": False,
        "inference_mode": True,
        "modules_to_save": modules_to_save,
        "base_model_name_or_path": base_model or backbone.source or backbone.name,
        "revision": None,
        "auto_mapping": None,
        "init_weights": None,
        "peft_version": PEFT_VERSION,
    }
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    write_head(task, backbone, out / HEAD_FILE)
    return out


# ------------------------------------------------------------------------------------ import


def _config(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise PeftError(f"{folder}: no {ADAPTER_CONFIG}: not a PEFT adapter folder", "adapter_config")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PeftError(f"{ADAPTER_CONFIG}: not JSON: {e}", "adapter_config") from e
    if not isinstance(config, dict):
        raise PeftError(f"{ADAPTER_CONFIG}: not a JSON object", "adapter_config")
    return config


def _check_config(config: dict, backbone: Backbone) -> int:
    """The adapter's prefix length, after checking that it fits the backbone."""
    if config.get("peft_type") != "PREFIX_TUNING":
        raise PeftError(
            f"peft_type {config.get('peft_type')!r}: only PREFIX_TUNING adapters import", "adapter_config"
        )
    if backbone.model_type not in BERT_FAMILY:
        raise PeftError(
            f"PEFT import is for BERT-family backbones, not {backbone.model_type!r}", "adapter_config"
        )
    if (config.get("num_transformer_submodules") or 1) != 1:
        raise PeftError(
            "num_transformer_submodules must be 1 (an encoder, not an encoder-decoder)", "adapter_config"
        )
    want = {
        "num_layers": backbone.num_layers,
        "token_dim": backbone.kv_size,
        "num_attention_heads": backbone.num_heads,
    }
    for key, value in want.items():
        if config.get(key) != value:
            raise PeftError(
                f"{key} {config.get(key)!r} does not fit the backbone {backbone.name!r} ({value})",
                "adapter_config",
            )
    p = config.get("num_virtual_tokens")
    if not isinstance(p, int) or not 1 <= p <= 512:
        raise PeftError(f"num_virtual_tokens {p!r}: expected an integer between 1 and 512", "adapter_config")
    return p


def _weights(folder: Path) -> dict[str, Tensor]:
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        if (folder / "adapter_model.bin").exists():
            raise PeftError(
                "adapter_model.bin (pickle) is not read: save the adapter as safetensors", "adapter_model"
            )
        raise PeftError(f"{folder}: no {ADAPTER_WEIGHTS}", "adapter_model")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise PeftError(f"{ADAPTER_WEIGHTS}: unreadable: {e}", "adapter_model") from e


def _position_offset(weights: dict[str, Tensor], backbone: Backbone, p: int) -> int:
    """P (PEFT's numbering), or 0 when the adapter carries PromptHub's shifted position table."""
    table = weights.pop(POSITIONS_KEY, None)
    if table is None:
        return p
    own = backbone.model.embeddings.position_embeddings.weight.detach().float().cpu()
    if table.shape != own.shape or not torch.equal(table[p:].float(), own[: own.shape[0] - p]):
        raise PeftError(
            "the adapter replaces the position embeddings with a table that is not the backbone's "
            f"shifted by {p}: PromptHub cannot serve it on the shared backbone",
            "adapter_model",
        )
    return 0


def import_adapter(folder: str | Path, backbone: Backbone) -> tuple[ServingTask, dict]:
    """A served task from a PEFT prefix-tuning adapter folder and its head file; also the
    metadata to store with it (the adapter's config). Raises PeftError saying what does not fit."""
    folder = Path(folder)
    config = _config(folder)
    p = _check_config(config, backbone)
    weights = _weights(folder)
    prompt = weights.pop(PROMPT_KEY, None)
    expected = (p, backbone.num_layers * 2 * backbone.kv_size)
    if prompt is None or tuple(prompt.shape) != expected:
        shape = None if prompt is None else tuple(prompt.shape)
        raise PeftError(
            f"{PROMPT_KEY} {shape}: expected the materialised prefix {expected} "
            "(an adapter saved with prefix_projection and inference_mode off holds it)",
            "adapter_model",
        )
    offset = _position_offset(weights, backbone, p)
    if weights:
        raise PeftError(
            f"the adapter also holds {sorted(weights)[:3]}: modules_to_save other than PromptHub's "
            "position table (e.g. a sequence-classification head over the pooler) cannot be served; "
            f"give the head as {HEAD_FILE}",
            "adapter_model",
        )
    spec_fields, head_state, _ = read_head(folder / HEAD_FILE)
    fields = {k: v for k, v in spec_fields.items() if k not in _PREFIX_FIELDS}
    try:
        spec = TaskSpec.from_dict(fields)
        spec = replace(
            spec,
            method="p-tuning-v2",
            prefix_length=p,
            layers="all",
            reparameterize=False,
            position_offset=offset,
            segment_ids=offset == 0,  # PEFT's numbering comes with PEFT's single segment
        ).validate(backbone.num_layers)
    except (SpecError, TypeError, ValueError) as e:
        raise PeftError(f"{HEAD_FILE}: its task spec is invalid: {e}", "head") from e
    try:
        head = tasks.get(spec.task_type).build_head(spec, backbone)
        head.load_state_dict(head_state, strict=True)
    except (RuntimeError, ValueError) as e:
        raise PeftError(f"{HEAD_FILE}: the head does not fit the spec: {e}", "head") from e
    head.eval()
    for param in head.parameters():
        param.requires_grad_(False)
    kv = prompt.float().view(p, backbone.num_layers, 2, backbone.kv_size).permute(1, 2, 0, 3).contiguous()
    task = ServingTask(
        spec=spec,
        head=head,
        kv=kv,
        layer_mask=torch.ones(backbone.num_layers, dtype=torch.bool),
    )
    keep = ("num_virtual_tokens", "base_model_name_or_path", "peft_version", "task_type", "revision")
    meta = {"training": {"peft": {k: config.get(k) for k in keep}}, "metrics": {}}
    return task.to(backbone.device), meta
