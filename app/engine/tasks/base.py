"""The interface of a task type. One module per type implements it; the registry names them.

A task type owns everything that differs between kinds of task: what a record holds, how it is
tokenised, the head on the encoder, the loss, how logits become the response, its metrics. The
rest of the engine (training loop, batching, checkpoints, serving) asks the registry and never
looks at the type's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from app.engine.data import Example
from app.engine.heads import FrozenHead


@dataclass(frozen=True)
class HeadLayout:
    """A head that is one linear map, as FrozenHead holds it: state_dict names, output size and
    the position it reads (0: [CLS], 1: verbalizer [MASK], None: every token)."""

    weight: str
    bias: str
    outputs: int
    inputs: int
    position: int | None


@dataclass(frozen=True)
class OutputTensor:
    """A field of decode()'s dicts that the Open Inference Protocol sends as a tensor of its own."""

    name: str
    #: "BYTES", "FP32" or "INT64"
    datatype: str
    #: the field is a dict label -> value: one column per label
    per_label: bool = False


class TaskType(ABC):
    name: ClassVar[str]
    #: the dataclass parse() returns
    example_type: ClassVar[type[Example]]
    #: whether SQuAD's JSON document format holds records of this type
    squad_json: ClassVar[bool] = False
    #: TaskSpec.head values the type accepts
    heads: ClassVar[tuple[str, ...]] = ("linear",)
    #: every input is a pair read with segment ids (question, context)
    always_pairs: ClassVar[bool] = False
    #: (required, optional) fields of a prediction record, the Open Inference Protocol's input tensors
    input_fields: ClassVar[tuple[tuple[str, ...], tuple[str, ...]]]
    #: fields of decode()'s dicts sent as tensors of their own (besides the whole `prediction`)
    output_tensors: ClassVar[tuple[OutputTensor, ...]] = ()
    #: the metrics a hyperparameter search may maximise (app.engine.search; keys of evaluate())
    search_metrics: ClassVar[tuple[str, ...]] = ()

    # ---------------------------------------------------------------- records

    @abstractmethod
    def parse(self, record: dict, *, line: int, require_labels: bool) -> Example:
        """Validate one record (a dict) into an example; DataError naming `line` and the field."""

    def csv_columns(self, require_labels: bool) -> tuple[str, ...] | None:
        """Columns a CSV/TSV header must have; None when CSV/TSV does not apply to the type."""
        return None

    def labels_of(self, example: Example) -> Iterable[str]:
        """The label strings an example carries (for label inference and label checks)."""
        return ()

    #: the record field labels_of() reads, for errors
    label_field: ClassVar[str | None] = None

    def infer_labels(self, examples: Iterable[Example]) -> list[str]:
        labels: set[str] = set()
        for ex in examples:
            labels.update(self.labels_of(ex))
        return sorted(labels)

    @abstractmethod
    def to_input(self, example: Example) -> dict:
        """The prediction record of an example (targets left out)."""

    # ---------------------------------------------------------------- spec

    def check_spec(self, spec: Any) -> None:
        """Rules of this type on a TaskSpec; raise model.SpecError(field=...)."""
        return None

    # ---------------------------------------------------------------- encoding

    @abstractmethod
    def encode(
        self,
        spec: Any,
        tokenizer: Any,
        examples: Sequence[Example],
        label2id: dict[str, int] | None,
        max_length: int,
    ) -> list[dict]:
        """Features (plain lists, unpadded) with `input_ids`, `token_type_ids` and the type's
        targets; label2id is None when the examples' targets are not to be encoded."""

    def clip(self, spec: Any, tokenizer: Any, example: Example, max_tokens: int) -> Example:
        """The example with overlong text cut BEFORE it is tokenised whole, so that encoding it with
        truncation to `max_tokens` gives exactly the features of the uncut example (serving calls
        this; a 20,000-character text costs the tokeniser ~max_tokens tokens, not 20,000
        characters). Default: unchanged (types whose outputs need the whole input)."""
        return example

    def input_length(self, spec: Any, tokenizer: Any, example: Example) -> tuple[int, str] | None:
        """(tokens, field) of an input for the 'refuse' overflow rule; None: never refused."""
        return None

    @abstractmethod
    def targets(self, features: Sequence[dict], length: int) -> dict[str, Tensor]:
        """The training targets of a batch of features padded to `length` tokens."""

    # ---------------------------------------------------------------- head, loss

    @abstractmethod
    def build_head(self, spec: Any, backbone: Any) -> nn.Module:
        """A freshly initialised head module."""

    @abstractmethod
    def head_layout(self, spec: Any, backbone: Any) -> HeadLayout:
        """The head's single linear map, for the inference-only FrozenHead."""

    def frozen_head(self, spec: Any, backbone: Any, state: dict[str, Tensor]) -> FrozenHead:
        """An inference-only head straight from a checkpoint's head tensors (no nn.Module)."""
        lay = self.head_layout(spec, backbone)
        if set(state) != {lay.weight, lay.bias}:
            raise ValueError(f"expected tensors {lay.weight!r} and {lay.bias!r}, got {sorted(state)}")
        weight, bias = state[lay.weight], state[lay.bias]
        if tuple(weight.shape) != (lay.outputs, lay.inputs) or tuple(bias.shape) != (lay.outputs,):
            raise ValueError(
                f"shapes {tuple(weight.shape)} and {tuple(bias.shape)}, expected "
                f"{(lay.outputs, lay.inputs)} and {(lay.outputs,)}"
            )
        return FrozenHead(weight, bias, lay.position, (lay.weight, lay.bias))

    @abstractmethod
    def loss(self, spec: Any, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Training loss of a batch (inputs and targets()) given the head's logits."""

    # ---------------------------------------------------------------- outputs

    @abstractmethod
    def decode(
        self, spec: Any, examples: Sequence[Example], features: Sequence[dict], logits: Sequence[Tensor]
    ) -> list[dict]:
        """One response dict per example from the per-feature logits."""

    @abstractmethod
    def metrics(self, predictions: Any, references: Any) -> dict[str, float]:
        """The type's metrics of predictions against references (plain floats)."""

    @abstractmethod
    def evaluate(
        self, spec: Any, examples: Sequence[Example], features: Sequence[dict], logits: Sequence[Tensor]
    ) -> dict:
        """metrics() of labelled examples from per-feature logits, plus "n"."""

    @abstractmethod
    def primary_metric(self, spec: Any) -> str:
        """The key of evaluate()'s result that selects the best epoch (higher is better)."""
