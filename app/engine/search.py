"""Built-in hyperparameter search: Optuna (TPE sampler, median pruner) over the learning rate,
the prefix length, the layers that carry a prefix and the MLP reparameterisation, scored on one
held-out split (the given eval data, or a seeded share of train) that every trial shares.

Each trial is a whole training run (early stopping included) that reports its held-out score after
every epoch; the MedianPruner stops a trial whose score is below the median of the earlier trials
at the same epoch. The best trial's trained task is returned with the search log (every trial's
settings, score, epochs and state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.engine import tasks as registry
from app.engine.backbone import Backbone
from app.engine.evaluation import primary_metric
from app.engine.model import SpecError, TaskSpec
from app.engine.search_state import (
    SearchState,
    fingerprint,
    rng_state,
    set_rng_state,
    trial_doc,
    trial_from_doc,
)
from app.engine.train import train_task
from app.engine.train_config import (
    Progress,
    ProgressFn,
    StopFn,
    TrainConfig,
    TrainResult,
    infer_labels,
    split_holdout,
)

#: the most trials one search may run (POST /train, the CLI)
MAX_TRIALS = 50
#: the search space (P-Tuning v2; shallow prompt tuning searches lr and prefix length only)
LR_RANGE = (3e-3, 1e-1)
PREFIX_LENGTHS = (8, 16, 32, 64, 128)
LAYER_CHOICES = ("all", "upper-half", "lower-half")


@dataclass
class SearchResult:
    best: TrainResult
    best_params: dict[str, Any]
    log: dict[str, Any] = field(default_factory=dict)


def check_search(task_type: str, trials: Any, metric: Any, timeout_s: Any = None) -> None:
    """SpecError naming the field ('search.trials', 'search.metric', 'search.timeout_s')."""
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise SpecError(f"trials must be an integer from 1 to {MAX_TRIALS}", field="search.trials")
    allowed = registry.get(task_type).search_metrics
    if metric is not None and metric not in allowed:
        raise SpecError(
            f"{metric!r}: a {task_type} search maximises one of {', '.join(allowed)}", field="search.metric"
        )
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0
    ):
        raise SpecError("timeout_s must be a positive number of seconds", field="search.timeout_s")


def run_search(
    backbone: Backbone,
    spec: TaskSpec,
    train_examples: Sequence,
    eval_examples: Sequence | None,
    config: TrainConfig,
    *,
    trials: int,
    metric: str | None = None,
    timeout_s: float | None = None,
    holdout_fraction: float = 0.1,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    task_name: str | None = None,
    state: SearchState | None = None,
) -> SearchResult:
    """Search `trials` settings around `spec` / `config` (their other fields stay as given).
    `state`: save the search's state after every sampled and every finished trial, and resume from a
    saved one (app.engine.search_state): finished trials are not run again, the trial in flight goes
    on from its own training state, and the result is the one an uninterrupted search gives."""
    import optuna

    check_search(spec.task_type, trials, metric, timeout_s)
    infer_labels(spec, train_examples)
    metric = metric or primary_metric(spec)
    fraction = config.holdout_fraction or holdout_fraction
    train, held = split_holdout(train_examples, eval_examples, fraction, config.seed)
    if not held:
        raise SpecError("a search needs eval data or enough training data to hold some out", field="search")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    prompt_method = spec.method in ("p-tuning-v2", "prompt-tuning")
    best: dict[str, Any] = {}
    log: list[dict[str, Any]] = []
    started = time.monotonic()
    fp = fingerprint(
        trials=trials,
        metric=metric,
        timeout_s=timeout_s,
        spec=spec.to_dict(),
        config=config,
        train=len(train),
        held=len(held),
    )
    saved = state.load(fp) if state is not None else None
    finished: list[dict[str, Any]] = []
    sampled: dict[str, Any] = {}  # the trial in flight: number, params, the sampler's state after it
    if saved is not None:
        finished = list(saved["trials"])
        for doc in finished:
            study.add_trial(trial_from_doc(doc))
        log[:] = [e for e in saved["log"] if e["state"] != "running"]
        if saved.get("best"):
            best.update(saved["best"], result=state.load_best(backbone))
        started -= saved.get("elapsed_s", 0.0)
        if saved.get("running"):
            study.enqueue_trial(saved["running"]["params"])
        if saved.get("rng"):
            set_rng_state(study.sampler, saved["rng"])
        if progress is not None:
            progress(
                Progress(
                    step=0,
                    total=0,
                    epoch=0.0,
                    loss=None,
                    message=f"search resumed after {len(finished)} of {trials} trials",
                )
            )

    def save_state(running: dict[str, Any] | None) -> None:
        if state is None:
            return
        state.save(
            {
                "fingerprint": fp,
                "trials": finished,
                "log": log,
                "best": {k: v for k, v in best.items() if k != "result"},
                "running": running,
                "rng": sampled.get("rng"),
                "elapsed_s": time.monotonic() - started,
            }
        )

    def objective(trial: optuna.Trial) -> float:
        number = trial.number + 1
        params: dict[str, Any] = {"lr": trial.suggest_float("lr", *LR_RANGE, log=True)}
        if prompt_method:
            params["prefix_length"] = trial.suggest_categorical("prefix_length", PREFIX_LENGTHS)
        if spec.method == "p-tuning-v2":
            params["layers"] = trial.suggest_categorical("layers", LAYER_CHOICES)
            params["reparameterize"] = trial.suggest_categorical("reparameterize", (False, True))
        t_spec = TaskSpec.from_dict(spec.to_dict())
        t_spec.prefix_dropout = spec.prefix_dropout
        for k in ("prefix_length", "reparameterize"):
            if k in params:
                setattr(t_spec, k, params[k])
        if "layers" in params:
            t_spec.layers = None if params["layers"] == "all" else params["layers"]
        if state is not None:  # before the trial trains: what it runs with, and where the sampler is
            sampled.update(number=trial.number, params=dict(trial.params), rng=rng_state(study.sampler))
            save_state({"number": trial.number, "params": dict(trial.params)})
        t_config = replace(config, lr=params["lr"], holdout_fraction=0.0)
        entry: dict[str, Any] = {"trial": number, "params": params, "state": "running", "scores": []}
        log.append(entry)

        history_scores: list[float] = []
        last: dict[str, Any] = {"metric": 0.0, "step": 0, "total": 0}

        def progress_hook(p: Progress) -> None:
            last.update(step=p.step, total=p.total)
            if p.metrics:  # an epoch ended: keep the searched metric for epoch_end
                m = next(iter(p.metrics.values()))
                last["metric"] = float(m.get(metric, 0.0))
            elif progress is not None:
                msg = f"search trial {number}/{trials}" + (f": {p.message}" if p.message else "")
                progress(replace(p, message=msg))

        def epoch_end(epoch: int, _mean: float) -> None:
            history_scores.append(last["metric"])
            entry["scores"] = list(history_scores)
            trial.report(last["metric"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        def say(message: str) -> None:
            if progress is not None:
                progress(
                    Progress(step=last["step"], total=last["total"], epoch=0.0, loss=None, message=message)
                )

        try:
            result = train_task(
                backbone,
                t_spec,
                train,
                held,
                t_config,
                progress=progress_hook,
                should_stop=should_stop,
                task_name=task_name,
                epoch_end=epoch_end,
                checkpointer=state.trial_checkpointer(trial.number) if state is not None else None,
            )
        except optuna.TrialPruned:
            entry["state"] = "pruned"
            say(f"search trial {number}/{trials} pruned after epoch {len(history_scores)}")
            raise
        except (SpecError, ValueError) as e:  # e.g. a layer choice the backbone cannot take
            entry.update(state="failed", error=str(e))
            raise optuna.TrialPruned(str(e)) from None
        value = float(result.metrics.get(metric, 0.0))
        entry.update(state="complete", value=value, best_epoch=result.best_epoch, steps=result.steps)
        if not best or value > best["value"]:
            best.update(value=value, result=result, params=params, trial=number)
            if state is not None:
                state.save_best(result, backbone)
        say(f"search trial {number}/{trials} done: {metric} {value:.4f} (best {best['value']:.4f})")
        return value

    def trial_done(_study, frozen) -> None:
        finished.append(trial_doc(frozen))
        if state is not None:
            save_state(None)
            state.trial_checkpointer(frozen.number).clear()

    remaining = trials - len(finished)
    time_left = None if timeout_s is None else max(timeout_s - (time.monotonic() - started), 0.001)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=time_left, catch=(), callbacks=[trial_done])
    if not best:
        raise SpecError("no search trial completed", field="search")
    doc = {
        "trials": trials,
        "metric": metric,
        "timeout_s": timeout_s,
        "held_out": len(held),
        "seconds": round(time.monotonic() - started, 2),
        "best_trial": best["trial"],
        "best_value": best["value"],
        "best_params": best["params"],
        "log": log,
    }
    return SearchResult(best=best["result"], best_params=best["params"], log=doc)


logging.getLogger("optuna").setLevel(logging.WARNING)
