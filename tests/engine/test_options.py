"""The options table: build_training, validate_training, and the CLI and API derived from it."""

from __future__ import annotations

import argparse

import pytest

from app.engine.data import DataError
from app.engine.model import SpecError, TaskSpec
from app.engine.options import BY_NAME, OPTIONS, TASK_DEFAULTS, build_training, validate_training
from app.engine.tasks.classification import ClassificationExample
from app.engine.tasks.token_classification import TokenExample
from app.engine.train_config import TrainConfig


def test_defaults_come_from_the_table():
    spec, config = build_training("regression", {}, ["a", "b"])
    assert spec.labels == ["a", "b"] and spec.task_type == "regression"
    for o in OPTIONS:
        target = spec if o.target == "spec" else config
        assert getattr(target, o.name) == o.default, o.name
    # the dataclasses start from the same table (the library holds nothing out unless asked)
    for o in OPTIONS:
        cls = TaskSpec if o.target == "spec" else TrainConfig
        field = cls.__dataclass_fields__[o.name]
        if o.name != "holdout_fraction":
            assert field.default == o.default, o.name
    assert TrainConfig().holdout_fraction == 0.0


def test_lr_default_depends_on_the_method():
    _, config = build_training("classification", {"method": "fine-tuning"})
    assert config.lr == 5e-5 and config.backbone_lr == 5e-5
    _, config = build_training("classification", {"method": "fine-tuning", "lr": 1e-4})
    assert config.lr == config.backbone_lr == 1e-4
    _, config = build_training("classification", {"method": "prompt-tuning", "lr": None})
    assert config.lr == TASK_DEFAULTS["classification"]["lr"]


def test_defaults_per_task_type_are_shared_by_every_surface():
    """One set of defaults per task type: the engine, the CLI (unset flags) and POST /train (unset
    fields) all end in the same TaskSpec / TrainConfig; a given value always wins."""
    from app.api.schemas import Hyperparameters
    from app.engine.cli_commands import training_hyperparameters

    for task_type, defaults in TASK_DEFAULTS.items():
        spec, config = build_training(task_type, {})
        for name, value in defaults.items():
            assert getattr(spec if BY_NAME[name].target == "spec" else config, name) == value, name
        args = _train_parser().parse_args(["--task-type", task_type, "--train", "t", "--out", "o"])
        assert build_training(task_type, training_hyperparameters(args)) == (spec, config)
        assert build_training(task_type, Hyperparameters().model_dump()) == (spec, config)
    spec, config = build_training("token-classification", {"prefix_length": 8, "lr": 1e-3})
    assert (spec.prefix_length, config.lr) == (8, 1e-3)
    assert config.epochs == 30 and config.early_stopping_patience == 3 and config.holdout_fraction == 0.1


def test_the_held_out_split_is_capped():
    from app.engine.train_config import MAX_HOLDOUT_EXAMPLES, split_holdout

    rows = [ClassificationExample(str(i), label="a") for i in range(20_000)]
    train, held = split_holdout(rows, None, 0.1, seed=0)
    assert len(held) == MAX_HOLDOUT_EXAMPLES and len(train) == 20_000 - MAX_HOLDOUT_EXAMPLES


def test_values_are_mapped_to_spec_and_config():
    hp = {
        "prefix_length": 8,
        "layers": [0, 1],
        "label_words": ["yes", "no"],
        "epochs": 7,
        "holdout_fraction": 0.2,
    }
    spec, config = build_training("classification", hp, ["y", "n"])
    assert (spec.prefix_length, spec.layers, spec.label_words) == (8, [0, 1], ["yes", "no"])
    assert (config.epochs, config.holdout_fraction) == (7, 0.2)


@pytest.mark.parametrize(
    ("hp", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"lr": 2.0}, "lr"),
        ({"batch_size": "8"}, "batch_size"),
        ({"prefix_length": True}, "prefix_length"),
        ({"method": "lora"}, "method"),
        ({"head": "mlp"}, "head"),
        ({"layers": [-1]}, "layers"),
        ({"label_words": []}, "label_words"),
        ({"reparameterize": "yes"}, "reparameterize"),
        ({"warmup": 0.1}, "warmup"),
    ],
)
def test_bad_values_name_the_field(hp, field):
    with pytest.raises(SpecError) as info:
        build_training("classification", hp, ["a"])
    assert info.value.field == f"hyperparameters.{field}"
    assert str(info.value).startswith(f"{field}: ")


def test_validate_training_spec_rules_name_the_field():
    cls = {"train": [ClassificationExample("x", label="a")]}
    validate_training("classification", {}, None, cls)  # labels inferred from train
    with pytest.raises(SpecError) as info:
        validate_training("question-answering", {"doc_stride": 128, "max_length": 128}, None, {"train": []})
    assert info.value.field == "hyperparameters.doc_stride"
    with pytest.raises(SpecError) as info:
        validate_training("token-classification", {"head": "verbalizer"}, ["O"], {"train": []})
    assert info.value.field == "hyperparameters.head"
    with pytest.raises(SpecError) as info:
        validate_training("classification", {"head": "verbalizer", "label_words": ["w"]}, ["a", "b"], cls)
    assert info.value.field == "hyperparameters.label_words"
    with pytest.raises(SpecError) as info:
        validate_training("classification", {}, None, {"train": [ClassificationExample("x")]})
    assert info.value.field == "labels"
    with pytest.raises(SpecError) as info:
        validate_training("multiple-choice", {}, None, {})
    assert info.value.field == "task_type"
    validate_training("regression", {}, None, {"train": []})


def test_validate_training_checks_labels_of_every_split():
    train = [ClassificationExample("x", label="a"), ClassificationExample("y", label="b")]
    evals = [ClassificationExample("x", label="a"), ClassificationExample("z", label="c")]
    validate_training("classification", {}, ["a", "b"], {"train": train})
    with pytest.raises(DataError) as info:
        validate_training("classification", {}, ["a", "b"], {"train": train, "eval": evals})
    err = info.value
    assert (err.split, err.line, err.field) == ("eval", 2, "label")
    assert str(err) == "eval: line 2: field 'label': label 'c' is not one of the task's labels"
    with pytest.raises(DataError) as info:
        validate_training(
            "token-classification", {}, ["O"], {"train": [TokenExample(["a", "b"], ["O", "B-X"])]}
        )
    assert (info.value.field, info.value.message) == ("tags", "tag 'B-X' is not one of the task's labels")


def _train_parser() -> argparse.ArgumentParser:
    from app.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_cli_train_arguments_come_from_the_table():
    from app.engine.tasks import TASK_TYPES

    actions = {a.dest: a for a in _train_parser()._actions}
    assert tuple(actions["task_type"].choices) == TASK_TYPES
    for o in OPTIONS:
        a = actions[o.name]
        assert o.flag in a.option_strings and o.help in a.help
        assert (tuple(a.choices) if a.choices else None) == o.choices
        if o.kind == "bool":
            assert a.default is None and a.nargs == 0
        elif o.method_defaults or o.task_defaults:
            assert a.default is None  # build_training picks the method's or task type's default
        else:
            assert a.default == o.default
    assert "--holdout" in actions["holdout_fraction"].option_strings
    args = _train_parser().parse_args(
        ["--task-type", "regression", "--train", "t", "--out", "o", "--label-words", "a, b"]
    )
    from app.engine.cli_commands import training_hyperparameters

    spec, config = build_training(args.task_type, training_hyperparameters(args))
    assert spec.label_words == ["a", "b"] and config.epochs == BY_NAME["epochs"].default == 30


def test_api_hyperparameters_come_from_the_table():
    from pydantic import ValidationError

    from app.api.schemas import Hyperparameters, TrainTask

    fields = Hyperparameters.model_fields
    served = [o for o in OPTIONS if o.api]
    assert list(fields) == [o.name for o in served]
    assert {o.name for o in OPTIONS} - set(fields) == {"backbone_lr"}  # full fine-tuning: CLI only
    hp = Hyperparameters()
    for o in served:
        assert getattr(hp, o.name) == (None if o.task_defaults else o.default)
        assert fields[o.name].description == o.help
    schema = Hyperparameters.model_json_schema()["properties"]
    assert schema["method"]["enum"] == ["p-tuning-v2", "prompt-tuning"]  # no fine-tuning on a server
    assert schema["head"]["enum"] == list(BY_NAME["head"].choices)
    assert (schema["epochs"]["minimum"], schema["epochs"]["maximum"]) == (1, 100)
    lr = next(x for x in schema["lr"].get("anyOf", [schema["lr"]]) if x.get("type") == "number")
    assert lr["exclusiveMinimum"] == 0 and schema["doc_stride"]["maximum"] == 4095  # lr unset: per task type
    with pytest.raises(ValidationError) as info:
        Hyperparameters(epochs=0)
    assert info.value.errors()[0]["loc"] == ("epochs",)
    with pytest.raises(ValidationError):
        Hyperparameters(nope=1)
    with pytest.raises(ValidationError):
        Hyperparameters(layers=[-1])
    # the API's task types are the registry's
    TrainTask(task="t", task_type="regression", train={"records": [{"text": "a", "score": 1}]})
