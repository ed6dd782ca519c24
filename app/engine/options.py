"""The training options: one table, read by the CLI, the API's Hyperparameters model and the
job payload mapping, and the one mapping from flat hyperparameters to (TaskSpec, TrainConfig).

Each option declares its type, default, range or choices, help, and whether it shapes the task
(TaskSpec) or the run (TrainConfig). `validate_training` is every rule a training request must
pass before it is queued: the table's ranges, the task type's spec rules, and the labels of the
given examples against the given labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from app.engine.data import Example
    from app.engine.model import TaskSpec
    from app.engine.train_config import TrainConfig

METHODS = ("p-tuning-v2", "prompt-tuning", "fine-tuning")
#: the methods a server trains (full fine-tuning carries a whole encoder copy: CLI only)
SERVED_METHODS = ("p-tuning-v2", "prompt-tuning")
HEADS = ("linear", "verbalizer")
PREFIX_INITS = ("random", "tokens")
#: the backbone precisions a prompt can be trained for (app.engine.int8_sim for int8)
TRAIN_PRECISIONS = ("fp32", "int8")
#: the most labels (tags) a task may have unless the caller gives its own cap (PROMPTHUB_MAX_LABELS)
DEFAULT_MAX_LABELS = 5000


#: Per task type, the defaults that differ from the table's (what POST /train, `prompthub train`
#: and the quality bench's "defaults" rows use when a value is not given). Chosen from the sweeps in
#: docs/quality.md ("Defaults"): prefixes want a learning rate near 3e-2 at this scale, and
#: sequence labelling wants a long prefix and small batches (many small updates).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"lr": 3e-2, "prefix_length": 16, "batch_size": 16},
    "token-classification": {"lr": 3e-2, "prefix_length": 64, "batch_size": 8},
}


@dataclass(frozen=True)
class Option:
    name: str
    #: "int", "float", "bool", "str", "layers" (a layer spec string or a list of indices) or "words"
    kind: str
    default: Any
    target: Literal["spec", "config"]
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None
    #: the choices the API accepts, when fewer than `choices`
    api_choices: tuple[str, ...] | None = None
    #: a default that depends on the method, e.g. the learning rate of full fine-tuning
    method_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: extra CLI spellings of the flag
    cli_aliases: tuple[str, ...] = ()
    #: offered by POST /train (False: CLI and library only, e.g. what only full fine-tuning uses)
    api: bool = True

    @property
    def nullable(self) -> bool:
        return self.default is None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def task_defaults(self) -> dict[str, Any]:
        """{task type: its default} where it differs from the table's."""
        return {t: d[self.name] for t, d in TASK_DEFAULTS.items() if self.name in d}

    def default_for(self, method: str, task_type: str | None = None) -> Any:
        """The method's own default (full fine-tuning's learning rate), else the task type's,
        else the table's."""
        if method in self.method_defaults:
            return self.method_defaults[method]
        return TASK_DEFAULTS.get(task_type or "", {}).get(self.name, self.default)


OPTIONS: tuple[Option, ...] = (
    Option(
        "method",
        "str",
        "p-tuning-v2",
        "spec",
        "how the task is tuned",
        choices=METHODS,
        api_choices=SERVED_METHODS,
    ),
    Option(
        "prefix_length", "int", 16, "spec", "prompt length in slots (per layer for P-Tuning v2)", ge=1, le=512
    ),
    Option("reparameterize", "bool", False, "spec", "MLP reparameterisation of the prefix"),
    Option("reparam_hidden", "int", 512, "spec", "hidden width of the reparameterisation MLP", ge=1, le=8192),
    Option(
        "prefix_init",
        "str",
        "random",
        "spec",
        "P-Tuning v2 flat prefix start: 'tokens' (each layer's keys/values of real tokens through the "
        "frozen encoder) or 'random'",
        choices=PREFIX_INITS,
    ),
    Option(
        "prefix_init_std",
        "float",
        0.5,
        "spec",
        "standard deviation of a random flat prefix start",
        gt=0.0,
        le=10.0,
    ),
    Option("prefix_dropout", "float", 0.1, "spec", "dropout on the prefix while training", ge=0.0, le=0.9),
    Option(
        "layers",
        "layers",
        None,
        "spec",
        "layers with a prefix: 'all' (default), 'lower-half', 'upper-half', "
        "'first:N', 'last:N', '0-2,5' or a list of indices",
    ),
    Option("head", "str", "linear", "spec", "task head ('verbalizer': classification only)", choices=HEADS),
    Option("label_words", "words", None, "spec", "verbalizer words, one per label"),
    Option(
        "lr", "float", 1e-2, "config", "learning rate", gt=0, le=1.0, method_defaults={"fine-tuning": 5e-5}
    ),
    Option(
        "backbone_lr",
        "float",
        5e-5,
        "config",
        "full fine-tuning: learning rate of the encoder (unset: lr)",
        gt=0,
        le=1.0,
        api=False,
    ),
    Option(
        "epochs",
        "int",
        30,
        "config",
        "training epochs at most (early stopping on the held-out split ends most runs sooner)",
        ge=1,
        le=100,
    ),
    Option("batch_size", "int", 16, "config", "training batch size", ge=1, le=512),
    Option("max_length", "int", 128, "spec", "longest input in tokens", ge=8, le=4096),
    Option(
        "doc_stride",
        "int",
        64,
        "spec",
        "question answering: tokens shared by consecutive context windows",
        ge=1,
        le=4095,
    ),
    Option("seed", "int", 42, "config", "random seed", ge=0, le=2**31 - 1),
    Option(
        "early_stopping_patience",
        "int",
        3,
        "config",
        "stop after this many epochs without a better eval score (0: never)",
        ge=0,
        le=100,
    ),
    Option(
        "anneal_epochs",
        "int",
        2,
        "config",
        "when early stopping triggers, first decay the learning rate to 0 over this many more epochs "
        "(0: stop at once)",
        ge=0,
        le=100,
    ),
    Option("eval_batch_size", "int", 64, "config", "evaluation batch size", ge=1, le=1024),
    Option("max_steps", "int", None, "config", "stop after this many optimiser steps", ge=1, le=10_000_000),
    Option(
        "holdout_fraction",
        "float",
        0.1,
        "config",
        "with no eval data, this seeded share of train (at most 1,000 examples) is held out for "
        "metrics, best-epoch selection and early stopping",
        ge=0.0,
        le=0.5,
        cli_aliases=("--holdout",),
    ),
    Option(
        "precision",
        "str",
        None,
        "config",
        "the backbone precision to train for: 'int8' trains against the int8 backbone an int8 server "
        "(PROMPTHUB_RUNTIME=onnx PROMPTHUB_PRECISION=int8) runs, so it serves the version; unset: the "
        "serving precision of the worker's settings (int8 when they say int8, else fp32)",
        choices=TRAIN_PRECISIONS,
    ),
    Option(
        "refit",
        "bool",
        True,
        "config",
        "when a held-out split came out of train (no eval data, activate not if_better) and is at "
        "least 5 percent of it: after it chose the epoch count, train again on all of train for that many "
        "epochs and publish that model (metrics stay the held-out split's)",
    ),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def default(name: str) -> Any:
    """The table's default of an option (what TaskSpec / TrainConfig fields start from)."""
    return BY_NAME[name].default


def _spec_error(message: str, name: str) -> Exception:
    from app.engine.model import SpecError

    return SpecError(f"{name}: {message}", field=f"hyperparameters.{name}")


def _check(opt: Option, value: Any) -> Any:
    """The value if it fits the option's type and range; SpecError naming the field otherwise."""
    kind = opt.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise _spec_error("must be true or false", opt.name)
        return value
    if kind in ("int", "float"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise _spec_error(f"must be {'an integer' if kind == 'int' else 'a number'}", opt.name)
        if opt.ge is not None and value < opt.ge:
            raise _spec_error(f"must be at least {opt.ge:g}", opt.name)
        if opt.gt is not None and value <= opt.gt:
            raise _spec_error(f"must be greater than {opt.gt:g}", opt.name)
        if opt.le is not None and value > opt.le:
            raise _spec_error(f"must be at most {opt.le:g}", opt.name)
        return float(value) if kind == "float" else value
    if kind == "str":
        if opt.choices is not None and value not in opt.choices:
            raise _spec_error(f"{value!r}: expected one of {', '.join(opt.choices)}", opt.name)
        return value
    if kind == "layers":
        if isinstance(value, str):
            return value
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
        ):
            return list(value)
        raise _spec_error("give a layer spec such as 'last:4' or non-negative layer indices", opt.name)
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(w, str) for w in value):
        raise _spec_error("give a non-empty list of words", opt.name)
    return list(value)


def build_training(
    task_type: str, hp: Mapping[str, Any] | None, labels: Sequence[str] | None = None
) -> tuple[TaskSpec, TrainConfig]:
    """The TaskSpec and TrainConfig of flat hyperparameters (the table's names; None or absent
    means the default, which for `lr` depends on the method). Checks types and ranges only; the
    task type's rules are TaskSpec.validate's (see validate_training)."""
    from app.engine.model import TaskSpec
    from app.engine.train_config import TrainConfig

    hp = dict(hp or {})
    unknown = sorted(set(hp) - set(BY_NAME))
    if unknown:
        raise _spec_error("unknown hyperparameter", unknown[0])
    method = hp.get("method") or BY_NAME["method"].default
    values = {"spec": {}, "config": {}}
    for opt in OPTIONS:
        value = hp.get(opt.name)
        value = opt.default_for(method, task_type) if value is None else _check(opt, value)
        values[opt.target][opt.name] = value
    if method == "fine-tuning" and hp.get("backbone_lr") is None:
        values["config"]["backbone_lr"] = values["config"]["lr"]  # the encoder is what it trains
    config = TrainConfig(**values["config"])
    return TaskSpec(task_type=task_type, labels=list(labels or []), **values["spec"]), config


def validate_training(
    task_type: str,
    hp: Mapping[str, Any] | None,
    labels: Sequence[str] | None,
    splits: Mapping[str, Sequence[Example]],
    *,
    max_labels: int | None = DEFAULT_MAX_LABELS,
) -> None:
    """Every rule a training request must pass: SpecError naming the field ('task_type',
    'labels', 'hyperparameters.doc_stride', ...) or DataError naming the split, line and field of
    an example whose label is not among the given labels. At most `max_labels` labels (given, or
    found in train) (None: no cap)."""
    from app.engine import tasks
    from app.engine.data import DataError
    from app.engine.model import SpecError

    try:
        task = tasks.get(task_type)
    except ValueError as e:
        raise SpecError(str(e), field="task_type") from None
    spec, _ = build_training(task_type, hp, labels)
    if not spec.labels:
        if "train" in splits:
            spec.labels = task.infer_labels(splits["train"])
        elif task.label_field is not None:
            # labels come with data not read here (an uploaded file): stand-ins, one per label
            # word if any, so the rules that do not depend on them are checked now; the worker
            # checks the rest when it reads the data
            spec.labels = [f"label-{i}" for i in range(len(spec.label_words or [None]))]
    if max_labels is not None and len(spec.labels) > max_labels:
        noun = "tags" if task.label_field == "tags" else "labels"
        raise SpecError(
            f"{len(spec.labels)} {noun}: a task may have at most {max_labels}",
            field="labels" if labels is not None else "train",
        )
    try:
        spec.validate()
    except SpecError as e:
        name = e.field or ""
        raise SpecError(
            str(e), field=f"hyperparameters.{name}" if name in BY_NAME else name or None
        ) from None
    if labels is None:
        return
    known = set(labels)
    noun = "tag" if task.label_field == "tags" else "label"
    for split, examples in splits.items():
        for i, ex in enumerate(examples or ()):
            bad = next((lab for lab in task.labels_of(ex) if lab not in known), None)
            if bad is not None:
                raise DataError(
                    f"{noun} {bad!r} is not one of the task's labels",
                    line=i + 1,
                    field=task.label_field,
                    split=split,
                )
