#!/usr/bin/env bash
# Runs the whole suite. Starts the local PostgreSQL server if it is installed but down,
# so the PostgreSQL tests run against a real server.
set -uo pipefail
cd "$(dirname "$0")/.."
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "test: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start 2>&1 || true
  for _ in $(seq 1 20); do pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break; sleep 0.5; done
fi
bash scripts/browser-deps.sh  # Chromium + Playwright for tests/console (skips loudly without apt)
bash scripts/nginx-deps.sh    # nginx for tests/fleet and the deploy template check (skips loudly without apt)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q --durations=15 "$@"
rc=$?
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
exit $rc
