"""A task on a shared backbone: its spec, its trainable prompt, its head.

TaskModel is the trainable form (prefix encoder, optional MLP, head). ServingTask is the folded
form that is stored and served: flat per-layer K/V (zeros and a mask at layers without a
prefix), an optional input prompt, the head. Many ServingTasks share one Backbone.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor, nn

from app.engine.backbone import Backbone, PrefixBatch
from app.engine.heads import build_head
from app.engine.options import HEADS, METHODS, PREFIX_INITS, default
from app.engine.prefix import InputPrompt, PrefixEncoder, parse_layers


class SpecError(ValueError):
    """A TaskSpec or training option is invalid; ``field`` names it where known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self):
        return (_make_spec_error, (str(self), self.field))


def _make_spec_error(message: str, field: str | None) -> SpecError:
    return SpecError(message, field=field)


def __getattr__(name: str):
    if name == "TASK_TYPES":
        from app.engine.tasks import TASK_TYPES

        return TASK_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spread_layers(kv: Tensor, layers: list[int], num_layers: int) -> Tensor:
    """K/V of the prefix layers [n_active, 2, P, kv] -> all layers [num_layers, 2, P, kv], zeros elsewhere."""
    index = torch.tensor(layers, dtype=torch.long, device=kv.device)
    return kv.new_zeros(num_layers, *kv.shape[1:]).index_copy(0, index, kv)


@dataclass
class TaskSpec:
    """Everything that defines a task's shape. Stored as JSON in every checkpoint."""

    task_type: str
    labels: list[str] = field(default_factory=list)
    method: str = default("method")
    prefix_length: int = default("prefix_length")
    layers: list[int] | str | None = default("layers")
    reparameterize: bool = default("reparameterize")
    reparam_hidden: int = default("reparam_hidden")
    prefix_dropout: float = default("prefix_dropout")
    prefix_init_std: float = default("prefix_init_std")
    #: "random" (normal, prefix_init_std) or "tokens": each layer's keys/values of real
    #: vocabulary tokens run through the frozen encoder (flat prefixes only)
    prefix_init: str = default("prefix_init")
    head: str = default("head")
    label_words: list[str] | None = default("label_words")
    head_dropout: float = 0.1
    max_length: int = default("max_length")
    doc_stride: int = default("doc_stride")
    max_answer_length: int = 30
    allow_no_answer: bool = False
    #: where the tokens' position ids start: 0 (PromptHub's own prefixes), or the prefix length
    #: for a prefix imported from PEFT, which numbers the tokens after its prefix (docs/peft.md)
    position_offset: int = 0
    #: False: every token is fed as segment 0 (token_type_ids zero), as PEFT's prefix tuning feeds
    #: the encoder; a task imported from PEFT was trained that way
    segment_ids: bool = True

    def validate(self, num_layers: int | None = None) -> TaskSpec:
        """The general rules, then the task type's own (tasks.get(task_type).check_spec)."""
        from app.engine import tasks

        try:
            task = tasks.get(self.task_type)
        except ValueError:
            raise SpecError(
                f"task_type {self.task_type!r}: expected one of {', '.join(tasks.TASK_TYPES)}",
                field="task_type",
            ) from None
        if self.method not in METHODS:
            raise SpecError(f"method {self.method!r}: expected one of {', '.join(METHODS)}", field="method")
        if self.head not in HEADS:
            raise SpecError(f"head {self.head!r}: expected one of {', '.join(HEADS)}", field="head")
        if self.head not in task.heads:
            which = " or ".join(t for t in tasks.TASK_TYPES if self.head in tasks.get(t).heads)
            raise SpecError(f"head {self.head!r} is for {which} tasks only", field="head")
        task.check_spec(self)
        if self.label_words is not None and len(self.label_words) != len(self.labels):
            raise SpecError("label_words: one word per label is needed", field="label_words")
        if self.prefix_init not in PREFIX_INITS:
            raise SpecError(
                f"prefix_init {self.prefix_init!r}: expected one of {', '.join(PREFIX_INITS)}",
                field="prefix_init",
            )
        if not 1 <= self.prefix_length <= 512:
            raise SpecError("prefix_length must be between 1 and 512", field="prefix_length")
        if not 8 <= self.max_length <= 4096:
            raise SpecError("max_length must be between 8 and 4096", field="max_length")
        if not 0 <= self.position_offset <= 512:
            raise SpecError("position_offset must be between 0 and 512", field="position_offset")
        if num_layers is not None and self.method == "p-tuning-v2":
            self.layers = parse_layers(self.layers, num_layers)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TaskSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class TaskModel(nn.Module):
    """Trainable task: prompt parameters and head; the backbone is shared and frozen
    (fine-tuning owns a trainable copy of it instead)."""

    def __init__(self, spec: TaskSpec, backbone: Backbone, shared_prefix: PrefixEncoder | None = None):
        super().__init__()
        spec.validate(backbone.num_layers)
        self.spec = spec
        self.head = build_head(spec, backbone)
        self.prefix: PrefixEncoder | None = None
        self.prompt: InputPrompt | None = None
        self.finetuned: Backbone | None = None
        self._shared = [backbone]  # a list, so the shared backbone is not a submodule
        if spec.method == "p-tuning-v2":
            if shared_prefix is not None and shared_prefix.prefix_length < spec.prefix_length:
                raise SpecError(
                    f"prefix_length {spec.prefix_length} is longer than the shared prefix "
                    f"({shared_prefix.prefix_length} slots)",
                    field="prefix_length",
                )
            # a shared (multi-task) prefix may be longer: this task reads its first prefix_length slots
            self.prefix = shared_prefix or new_prefix_encoder(spec, backbone)
        elif spec.method == "prompt-tuning":
            self.prompt = InputPrompt(
                spec.prefix_length, backbone.hidden_size, init=_vocab_init(backbone, spec.prefix_length)
            )
        else:
            self.finetuned = copy.deepcopy(backbone)
            self.finetuned.unfreeze()
            for name, p in self.finetuned.model.named_parameters():
                if name.startswith("pooler."):  # not used by any head here
                    p.requires_grad_(False)

    @property
    def backbone(self) -> Backbone:
        return self.finetuned if self.finetuned is not None else self._shared[0]

    def prefix_batch(self, batch_size: int) -> PrefixBatch | None:
        if self.prefix is None:
            return None
        bb = self._shared[0]
        kv = self.prefix()[:, :, : self.spec.prefix_length]  # [n_active, 2, P, kv]
        layers = torch.tensor(self.spec.layers, device=kv.device)
        full = spread_layers(kv, self.spec.layers, bb.num_layers)
        mask = kv.new_zeros(bb.num_layers, batch_size, kv.shape[2])
        mask[layers] = 1.0
        return PrefixBatch(full.unsqueeze(2).expand(-1, -1, batch_size, -1, -1), mask)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        b = batch["input_ids"].shape[0]
        prompts = self.prompt(b) if self.prompt is not None else None
        token_types = batch.get("token_type_ids") if self.spec.segment_ids else None
        hidden = self.backbone(
            batch["input_ids"],
            batch["attention_mask"],
            token_types,
            prefix=self.prefix_batch(b),
            input_prompts=prompts,
            position_offsets=[self.spec.position_offset] * b if self.spec.position_offset else None,
        )
        return self.head(hidden)

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        self.backbone.train(mode)  # dropout in the frozen encoder too, as in the paper's code
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def to_serving(self) -> ServingTask:
        """Fold the prompt (MLP away) into what is stored and served."""
        bb = self._shared[0]
        kv = layer_mask = prompt = None
        if self.prefix is not None:
            flat = self.prefix.fold()[:, :, : self.spec.prefix_length].contiguous()
            layers = torch.tensor(self.spec.layers, device=flat.device)
            kv = spread_layers(flat, self.spec.layers, bb.num_layers)
            layer_mask = torch.zeros(bb.num_layers, dtype=torch.bool, device=flat.device)
            layer_mask[layers] = True
        if self.prompt is not None:
            prompt = self.prompt.weight.detach().clone()
        head = copy.deepcopy(self.head).eval()
        for p in head.parameters():
            p.requires_grad_(False)
        return ServingTask(
            spec=self.spec,
            head=head,
            kv=kv,
            layer_mask=layer_mask,
            prompt=prompt,
            finetuned=copy.deepcopy(self.finetuned).eval() if self.finetuned is not None else None,
        )


def _vocab_ids(vocab_size: int, n: int, g: torch.Generator) -> Tensor:
    """n frequent-ish vocabulary ids (from the 1,000-5,000 range), drawn with `g`."""
    lo = min(1000, vocab_size - n)
    hi = min(5000, vocab_size)
    return torch.randint(lo, max(hi, lo + n), (n,), generator=g)


def _vocab_init(backbone: Backbone, n: int, seed: int = 0) -> Tensor:
    """Initialise shallow prompts from the embeddings of frequent-ish vocabulary entries."""
    emb = backbone.input_embeddings().weight.detach()
    g = torch.Generator().manual_seed(seed)
    ids = _vocab_ids(emb.shape[0], n, g)
    if emb.shape[1] != backbone.hidden_size:
        return torch.randn(n, backbone.hidden_size, generator=g) * 0.02
    return emb[ids].clone()


def token_kv_init(backbone: Backbone, n: int, layers: list[int], seed: int = 0) -> Tensor:
    """Flat prefix init [len(layers), 2, n, kv]: the keys/values the frozen encoder computes for
    n frequent-ish vocabulary tokens (the ids _vocab_init draws), so each prefix starts inside
    its layer's real key/value distribution instead of a random point in it."""
    g = torch.Generator().manual_seed(seed)
    kv = backbone.token_kv(_vocab_ids(backbone.input_embeddings().weight.shape[0], n, g))
    return kv[torch.tensor(layers, device=kv.device)].cpu().contiguous()


def new_prefix_encoder(spec: TaskSpec, backbone: Backbone) -> PrefixEncoder:
    """A fresh P-Tuning v2 prefix encoder for a validated spec, started as spec.prefix_init says
    ("tokens" applies to flat prefixes; an MLP-reparameterised one always starts random)."""
    prefix = PrefixEncoder(
        n_layers=len(spec.layers),
        kv_size=backbone.kv_size,
        prefix_length=spec.prefix_length,
        reparameterize=spec.reparameterize,
        reparam_hidden=spec.reparam_hidden,
        dropout=spec.prefix_dropout,
        init_std=spec.prefix_init_std,
    )
    if spec.prefix_init == "tokens" and not spec.reparameterize:
        prefix.load_flat(token_kv_init(backbone, spec.prefix_length, spec.layers))
    return prefix


@dataclass
class ServingTask:
    """A task ready to serve on a shared backbone."""

    spec: TaskSpec
    head: nn.Module
    kv: Tensor | None = None  # [num_layers, 2, P, kv_size], zeros where layer_mask is False
    layer_mask: Tensor | None = None  # [num_layers] bool
    prompt: Tensor | None = None  # [Pi, hidden]
    finetuned: Backbone | None = None  # full fine-tuning: its own encoder copy (CLI only)
    meta: dict = field(default_factory=dict)

    @property
    def prefix_length(self) -> int:
        return 0 if self.kv is None else self.kv.shape[2]

    @property
    def prompt_length(self) -> int:
        return 0 if self.prompt is None else self.prompt.shape[0]

    def nbytes(self) -> int:
        n = sum(p.numel() * p.element_size() for p in self.head.parameters())
        for t in (self.kv, self.prompt):
            if t is not None:
                n += t.numel() * t.element_size()
        return n

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> ServingTask:
        def mv(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return (
                t.to(device=device, dtype=dtype)
                if dtype is not None and t.is_floating_point()
                else t.to(device)
            )

        head = self.head.to(device=device, dtype=dtype) if dtype is not None else self.head.to(device)
        return ServingTask(
            spec=self.spec,
            head=head,
            kv=mv(self.kv),
            layer_mask=mv(self.layer_mask),
            prompt=mv(self.prompt),
            finetuned=self.finetuned.to(device) if self.finetuned is not None else None,
            meta=self.meta,
        )
