"""Resumable searches: a search stopped mid-way (its worker died or was stopped) goes on where it was.

A search's state lives in one folder:

- ``search.json``: the finished trials as Optuna recorded them (state, parameters, distributions,
  value, per-epoch scores), the search log, the best trial so far, the trial in flight with its
  parameters, the sampler's random state right after that trial was sampled, and the time spent;
- ``best.pt``: the best finished trial's result (its served task as checkpoint bytes, its metrics
  and history), read back with ``torch.load(weights_only=True)``: tensors and plain containers only;
- ``trial-N.state``: the training state of trial N while it runs (app.engine.resume.RunCheckpointer).

On resume the finished trials are added to a new study, the trial in flight is enqueued with its
parameters and resumes from its own training state, and the sampler's random state is put back, so
the following trials are sampled as they would have been: a resumed search gives the same trials,
scores and best version as an uninterrupted one. Every file is written atomically; a state whose
fingerprint (the search's settings and data sizes) differs from the search's is ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from app.engine.checkpoint import atomic_write, checkpoint_bytes, load_checkpoint_bytes
from app.engine.resume import RunCheckpointer, bytes_tensor, tensor_bytes
from app.engine.train_config import TrainResult

log = logging.getLogger(__name__)

STATE_VERSION = 1


def fingerprint(**parts: Any) -> str:
    """A digest of what makes two searches the same search."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class SearchState:
    """Where a search saves its state; `resumed_trials` is set when it loaded one."""

    def __init__(self, root: str | Path, every_s: float = 180.0, every_steps: int | None = None) -> None:
        self.root = Path(root)
        self.every_s = every_s
        self.every_steps = every_steps
        self.resumed_trials: int | None = None

    @property
    def doc_path(self) -> Path:
        return self.root / "search.json"

    def trial_checkpointer(self, number: int) -> RunCheckpointer:
        return RunCheckpointer(self.root / f"trial-{number}.state", self.every_s, self.every_steps)

    def save(self, doc: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.doc_path, json.dumps({"version": STATE_VERSION, **doc}).encode())

    def load(self, fp: str) -> dict[str, Any] | None:
        """The saved state of this search (same fingerprint), None otherwise."""
        try:
            doc = json.loads(self.doc_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("%s: unreadable search state; starting over", self.doc_path)
            return None
        if doc.get("version") != STATE_VERSION or doc.get("fingerprint") != fp:
            log.warning("%s: search state of another search; starting over", self.doc_path)
            return None
        self.resumed_trials = len(doc.get("trials") or [])
        return doc

    def save_best(self, result: TrainResult, backbone) -> None:
        buf = io.BytesIO()
        torch.save(
            {
                "task": bytes_tensor(checkpoint_bytes(result.task, backbone)),
                "metrics": result.metrics,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "num_trainable": result.num_trainable,
                "trainable_fraction": result.trainable_fraction,
                "seconds": result.seconds,
                "steps": result.steps,
            },
            buf,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / "best.pt", buf.getvalue())

    def load_best(self, backbone) -> TrainResult:
        doc = torch.load(io.BytesIO((self.root / "best.pt").read_bytes()), weights_only=True)
        task = load_checkpoint_bytes(tensor_bytes(doc.pop("task")), backbone)
        return TrainResult(task=task, **doc)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------- Optuna's side


def trial_doc(trial) -> dict[str, Any]:
    """A finished Optuna trial as plain JSON."""
    from optuna.distributions import distribution_to_json

    return {
        "state": trial.state.name,
        "params": trial.params,
        "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
        "value": trial.value,
        "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()},
    }


def trial_from_doc(doc: dict[str, Any]):
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState, create_trial

    return create_trial(
        state=TrialState[doc["state"]],
        params=doc["params"],
        distributions={k: json_to_distribution(v) for k, v in doc["distributions"].items()},
        value=doc["value"],
        intermediate_values={int(k): v for k, v in doc["intermediate_values"].items()},
    )


def _rng_holders(sampler) -> dict[str, Any]:
    """The sampler's random states (TPE's own and its start-up random sampler's)."""
    holders = {"tpe": getattr(sampler, "_rng", None)}
    random_sampler = getattr(sampler, "_random_sampler", None)
    holders["random"] = getattr(random_sampler, "_rng", None)
    return {k: h for k, h in holders.items() if h is not None and hasattr(h, "rng")}


def rng_state(sampler) -> dict[str, list]:
    out = {}
    for name, holder in _rng_holders(sampler).items():
        kind, keys, pos, has_gauss, cached = holder.rng.get_state()
        out[name] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return out


def set_rng_state(sampler, state: dict[str, list]) -> None:
    import numpy as np

    holders = _rng_holders(sampler)
    for name, (kind, keys, pos, has_gauss, cached) in state.items():
        if name in holders:
            holders[name].rng.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if set(state) != set(holders):
        log.warning("the sampler's random state could not be restored whole; later trials may differ")
