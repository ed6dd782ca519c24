"""Task heads on top of the encoder's last hidden states.

All heads take hidden states [B, L, H] and return logits:
- ClassificationHead: [B, C] from the first ([CLS]) position (C = 1 for regression).
- VerbalizerHead: [B, C] from the [MASK] position (index 1: the input is "[CLS] [MASK] text ..."),
  scored against a trainable label matrix initialised from the label words' input embeddings
  (the backbones here ship no masked-LM head, so the matrix stands in for the decoder rows).
- TokenClassificationHead: [B, L, C].
- QuestionAnsweringHead: [B, L, 2] (start, end).

Which head a task gets is its task type's choice (app.engine.tasks); FrozenHead is the form a
server holds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VERBALIZER_MASK_POSITION = 1


class ClassificationHead(nn.Module):
    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.classifier(self.dropout(hidden[:, 0]))


class VerbalizerHead(nn.Module):
    def __init__(self, label_embeddings: Tensor, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.label_matrix = nn.Parameter(label_embeddings.detach().clone())
        self.bias = nn.Parameter(torch.zeros(label_embeddings.shape[0]))

    def forward(self, hidden: Tensor) -> Tensor:
        h = self.dropout(hidden[:, VERBALIZER_MASK_POSITION])
        return h @ self.label_matrix.t() + self.bias


class TokenClassificationHead(nn.Module):
    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.classifier(self.dropout(hidden))


class QuestionAnsweringHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.qa_outputs = nn.Linear(hidden_size, 2)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.qa_outputs(hidden)


class FrozenHead:
    """An inference-only head: the same maths as the module it was made from (eval mode, so no
    dropout), held as bare tensors. A cached task in a server that holds thousands of them then
    carries two tensors instead of two or three nn.Modules (each ~1.2 kB of Python dicts).

    Quacks like the parts of nn.Module the serving path uses: call, parameters(), state_dict(), to().
    """

    __slots__ = ("weight", "bias", "position", "names")

    def __init__(self, weight: Tensor, bias: Tensor, position: int | None, names: tuple[str, str]):
        self.weight = weight
        self.bias = bias
        self.position = position  # 0: [CLS], 1: verbalizer [MASK], None: every token
        self.names = names  # state_dict keys of the module it was made from

    @classmethod
    def from_module(cls, head: nn.Module) -> FrozenHead:
        with torch.no_grad():
            if isinstance(head, ClassificationHead):
                lin, pos, prefix = head.classifier, 0, "classifier."
            elif isinstance(head, TokenClassificationHead):
                lin, pos, prefix = head.classifier, None, "classifier."
            elif isinstance(head, QuestionAnsweringHead):
                lin, pos, prefix = head.qa_outputs, None, "qa_outputs."
            elif isinstance(head, VerbalizerHead):
                return cls(
                    head.label_matrix.detach(),
                    head.bias.detach(),
                    VERBALIZER_MASK_POSITION,
                    ("label_matrix", "bias"),
                )
            else:
                raise TypeError(f"no frozen form for {type(head).__name__}")
            return cls(lin.weight.detach(), lin.bias.detach(), pos, (prefix + "weight", prefix + "bias"))

    def __call__(self, hidden: Tensor) -> Tensor:
        h = hidden if self.position is None else hidden[:, self.position]
        return torch.nn.functional.linear(h, self.weight, self.bias)

    def parameters(self):
        return iter((self.weight, self.bias))

    def state_dict(self) -> dict[str, Tensor]:
        return {self.names[0]: self.weight, self.names[1]: self.bias}

    def to(self, device=None, dtype=None) -> FrozenHead:
        def mv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)

        return FrozenHead(mv(self.weight), mv(self.bias), self.position, self.names)

    def eval(self) -> FrozenHead:
        return self


def label_word_embeddings(backbone, label_words: list[str]) -> Tensor:
    """Mean input embedding of each label word's word pieces: [C, H]."""
    emb = backbone.input_embeddings().weight.detach()
    rows = []
    for word in label_words:
        ids = backbone.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"label word {word!r} has no tokens in the backbone's vocabulary")
        rows.append(emb[ids].mean(dim=0))
    out = torch.stack(rows)
    if out.shape[1] != backbone.hidden_size:  # factorised embeddings (ELECTRA, ALBERT-style)
        raise ValueError("the verbalizer head needs input embeddings of the hidden size")
    return out


def build_head(spec, backbone) -> nn.Module:
    """A freshly initialised head for a TaskSpec (built by its task type)."""
    from app.engine import tasks

    return tasks.get(spec.task_type).build_head(spec, backbone)
