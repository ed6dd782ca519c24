#!/bin/sh
# Seeds the prompt store volume with the shipped prefixes on first start, then runs the command.
# Versions already in the store are never overwritten.
set -eu
# A password from a file (a Docker/Kubernetes secret), never from the image or the compose file:
# libpq (psycopg) reads PGPASSWORD, so PROMPTHUB_DATABASE_URL carries no password.
if [ -n "${PGPASSWORD_FILE:-}" ] && [ -z "${PGPASSWORD:-}" ]; then
  PGPASSWORD=$(cat "$PGPASSWORD_FILE")
  export PGPASSWORD
fi
STORE="${PROMPTHUB_STORE_DIR:-/data/prompts_store}"
SHIPPED="${PROMPTHUB_SHIPPED_DIR:-/app/prompts_store.shipped}"
mkdir -p "$STORE"
if [ -d "$SHIPPED" ]; then
  for task in "$SHIPPED"/*/; do
    [ -d "$task" ] || continue
    name=$(basename "$task")
    mkdir -p "$STORE/$name"
    for f in "$task"*; do
      [ -f "$f" ] || continue
      dest="$STORE/$name/$(basename "$f")"
      [ -e "$dest" ] || cp "$f" "$dest"
    done
  done
fi
exec "$@"
