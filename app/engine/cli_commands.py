"""`prompthub train` and `prompthub predict`: the engine as a command-line tool, no server."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from app.engine import data as D


class _Bar:
    """A progress bar on stderr (tqdm), or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=p.total, file=sys.stderr, unit="step", dynamic_ncols=True)
        self.bar.total = p.total
        self.bar.n = p.step
        post = {"epoch": f"{p.epoch:.2f}"}
        if p.loss is not None:
            post["loss"] = f"{p.loss:.4f}"
        if p.metrics:
            for task_metrics in p.metrics.values():
                for k, v in task_metrics.items():
                    if k != "n" and isinstance(v, float):
                        post[k] = f"{v:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()
        if p.message:
            self.bar.write(p.message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: exit statuses of the commands (README): sysexits.h's EX_DATAERR and EX_NOINPUT for the data
EXIT_OK = 0
EXIT_RUNTIME = 1  # the backbone could not be loaded, an unexpected error
EXIT_USAGE = 2  # bad arguments or options (argparse uses 2 as well)
EXIT_DATA = 65  # an input file's content is invalid (the message names file, line and field)
EXIT_NO_INPUT = 66  # an input file is missing or unreadable


def _fail(msg: str, status: int = EXIT_USAGE) -> int:
    print(f"prompthub: error: {msg}", file=sys.stderr)
    return status


class _InputError(Exception):
    """A data file cannot be read; the message names the file."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _read(path: str, task_type: str) -> list:
    """Examples of one file; errors name that file (not another one of the command's files)."""
    try:
        return D.read_examples(path, task_type)
    except D.DataError as e:
        raise _InputError(f"{path}: {e}", EXIT_DATA) from None
    except OSError as e:
        raise _InputError(f"{path}: {e}", EXIT_NO_INPUT) from None


def training_hyperparameters(args) -> dict:
    """The options-table values given on the command line (None: the table's default)."""
    from app.engine.options import OPTIONS

    return {o.name: getattr(args, o.name, None) for o in OPTIONS}


def train_command(args) -> int:
    import torch

    from app.engine.backbone import BackboneError, load_backbone
    from app.engine.checkpoint import save_checkpoint
    from app.engine.model import SpecError
    from app.engine.options import build_training
    from app.engine.prefix import LayerSpecError
    from app.engine.train import train_task

    try:
        train = _read(args.train, args.task_type)
        evals = _read(args.eval, args.task_type) if args.eval else None
    except _InputError as e:
        return _fail(str(e), e.status)
    try:
        spec, config = build_training(args.task_type, training_hyperparameters(args))
        if args.search is not None:
            from app.engine.search import check_search

            check_search(args.task_type, args.search, args.search_metric, args.search_timeout)
    except SpecError as e:
        return _fail(str(e))
    try:
        backbone = load_backbone(args.backbone, device=args.device)
    except BackboneError as e:
        return _fail(str(e), EXIT_RUNTIME)
    bar = _Bar(not args.no_progress)
    t0 = time.time()
    try:
        search = None
        if args.search is not None:
            from app.engine.search import run_search

            search = run_search(
                backbone,
                spec,
                train,
                evals,
                config,
                trials=args.search,
                metric=args.search_metric,
                timeout_s=args.search_timeout,
                progress=bar,
            )
            result, spec = search.best, search.best.task.spec
        else:
            result = train_task(backbone, spec, train, evals, config, progress=bar)
    except D.DataError as e:
        bar.close()
        return _fail(str(e), EXIT_DATA)
    except (SpecError, LayerSpecError) as e:
        bar.close()
        return _fail(str(e))
    finally:
        bar.close()
    out = Path(args.out)
    meta = {
        "training": {
            **config.to_dict(),
            "method": spec.method,
            "device": str(args.device),
            "torch": torch.__version__,
        },
        "metrics": result.metrics,
        "history": result.history,
        "source": {"train": str(args.train), "eval": str(args.eval) if args.eval else None},
        "num_trainable": result.num_trainable,
        "trainable_fraction": result.trainable_fraction,
    }
    if search is not None:
        meta["search"] = search.log
    if result.refit:
        meta["refit"] = result.refit
    if config.precision == "int8":  # trained against the int8 backbone (app.engine.int8_sim)
        meta["precision"] = "int8"
    sha = save_checkpoint(result.task, out / "checkpoint.safetensors", backbone, meta)
    summary = {
        "metrics": result.metrics,
        "best_epoch": result.best_epoch,
        "refit": result.refit,
        "steps": result.steps,
        "seconds": round(time.time() - t0, 2),
        "num_trainable": result.num_trainable,
        "trainable_fraction": result.trainable_fraction,
        "checkpoint": str(out / "checkpoint.safetensors"),
        "sha256": sha,
    }
    if search is not None:
        summary["search"] = {k: search.log[k] for k in ("best_trial", "best_value", "best_params", "metric")}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def predict_command(args) -> int:
    from app.engine.backbone import BackboneError, load_backbone
    from app.engine.checkpoint import CheckpointError, load_checkpoint, read_metadata
    from app.engine.predict import predict

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    try:
        meta = read_metadata(path)
    except CheckpointError as e:
        return _fail(str(e), EXIT_DATA)
    except OSError as e:
        return _fail(str(e), EXIT_NO_INPUT)
    try:
        backbone = load_backbone(args.backbone or meta.get("backbone", {}).get("name"), device=args.device)
    except BackboneError as e:
        return _fail(str(e), EXIT_RUNTIME)
    try:
        task = load_checkpoint(path, backbone)
    except CheckpointError as e:
        return _fail(str(e), EXIT_DATA)
    try:
        examples_raw = _read_raw(args.input, task.spec.task_type)
        preds = predict(backbone, task, examples_raw, batch_size=args.batch_size)
    except D.DataError as e:
        return _fail(f"{args.input}: {e}", EXIT_DATA)
    except OSError as e:
        return _fail(f"{args.input}: {e}", EXIT_NO_INPUT)
    for p in preds:
        sys.stdout.write(json.dumps(p) + "\n")
    return 0


def _read_raw(path: str, task_type: str) -> list[dict]:
    """Input records as dicts (labels optional), validated by the same parser as training data."""
    from app.engine import tasks

    task = tasks.get(task_type)
    return [task.to_input(ex) for ex in D.read_examples(path, task_type, require_labels=False)]
