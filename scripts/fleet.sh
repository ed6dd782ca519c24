#!/usr/bin/env bash
# A PromptHub fleet on this machine (issue 13): 2 API replicas, 2 Celery workers, nginx in front,
# moto_server as the S3 store, against the local PostgreSQL and RabbitMQ.
#
#   scripts/fleet.sh up      (make fleet)       start everything, wait until nginx serves /readyz
#   scripts/fleet.sh down    (make fleet-down)  stop exactly the processes of the pid files
#   scripts/fleet.sh status                     which of them run
#
# One pid file a process under $FLEET_DIR (api-1.pid api-2.pid worker-1.pid worker-2.pid nginx.pid
# s3.pid), logs beside them (*.log). Every process runs in its own session (setsid), so `down`
# stops it and its children (a Celery worker's pool process) and nothing else.
#
# Overrides (environment): FLEET_DIR (var/fleet), FLEET_API_PORTS ("8001 8002"), FLEET_WORKERS (2),
# FLEET_LB_HOST (127.0.0.1), FLEET_LB_PORT (8080), FLEET_S3_PORT (9000), FLEET_BUCKET (prompthub),
# FLEET_DB (prompthub_fleet), FLEET_PG (postgresql://postgres@127.0.0.1:5432), FLEET_TIMEOUT (300 s
# to become ready), PY (.venv/bin/python), FLEET_KEEP ("s3": `down` leaves the S3 server running and
# `up` reuses it); any PROMPTHUB_* setting is passed through (e.g. PROMPTHUB_BACKBONE,
# PROMPTHUB_BROKER_URL, PROMPTHUB_AUTH).
# moto's S3 server holds objects in memory: a fleet restarted without FLEET_KEEP=s3 starts empty
# (its database is dropped with the objects, so no row names a missing object).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

FLEET_DIR=${FLEET_DIR:-var/fleet}
mkdir -p "$FLEET_DIR"
FLEET_DIR=$(cd "$FLEET_DIR" && pwd)
read -r -a API_PORTS <<<"${FLEET_API_PORTS:-8001 8002}"
WORKERS=${FLEET_WORKERS:-2}
LB_HOST=${FLEET_LB_HOST:-127.0.0.1}
LB_PORT=${FLEET_LB_PORT:-8080}
S3_PORT=${FLEET_S3_PORT:-9000}
BUCKET=${FLEET_BUCKET:-prompthub}
DB=${FLEET_DB:-prompthub_fleet}
PG=${FLEET_PG:-postgresql://postgres@127.0.0.1:5432}
TIMEOUT=${FLEET_TIMEOUT:-300}
PY=${PY:-$ROOT/.venv/bin/python}
MOTO=${MOTO:-$(dirname "$PY")/moto_server}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

log() { echo "fleet: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# ------------------------------------------------------------------------------ pid files

names() {
  local i
  for i in "${!API_PORTS[@]}"; do echo "api-$((i + 1))"; done
  for ((i = 1; i <= WORKERS; i++)); do echo "worker-$i"; done
  echo nginx
  echo s3
}

# the pid in $1.pid when that process is alive and is what we started (not a recycled pid)
live_pid() {
  local f="$FLEET_DIR/$1.pid" pid cmd
  [ -f "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  case "$1" in
    api-* | worker-*) [[ $cmd == *app.cli* ]] ;;
    nginx) [[ $cmd == *nginx* ]] ;;
    s3) [[ $cmd == *moto_server* ]] ;;
  esac || return 1
  echo "$pid"
}

stop_one() {
  local name=$1 pid
  if ! pid=$(live_pid "$name"); then
    rm -f "$FLEET_DIR/$name.pid"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop in 20 s: SIGKILL to its process group"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # children left behind (a worker's pool process) are in the process's own group
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$FLEET_DIR/$name.pid"
}

down() {
  local name
  # the entry first, then the replicas and workers, the store last
  for name in nginx $(names | grep -E '^(api|worker)-') s3; do
    if [[ " ${FLEET_KEEP:-} " == *" $name "* ]] && live_pid "$name" >/dev/null; then
      log "keeping $name (FLEET_KEEP)"
      continue
    fi
    stop_one "$name"
  done
  log "stopped"
}

status() {
  local name pid rc=0
  for name in $(names); do
    if pid=$(live_pid "$name"); then
      echo "$name running (pid $pid)"
    else
      echo "$name stopped"
      rc=3
    fi
  done
  return $rc
}

# ------------------------------------------------------------------------------ start

# run "$@" detached in its own session with its log, record its pid in $name.pid
spawn() {
  local name=$1
  shift
  setsid "$@" >>"$FLEET_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$FLEET_DIR/$name.pid"
  log "started $name (pid $!, log $FLEET_DIR/$name.log)"
}

wait_http() { # url what
  local deadline=$((SECONDS + TIMEOUT))
  until curl -fs -o /dev/null --max-time 5 "$1"; do
    [ $SECONDS -lt $deadline ] || die "$2 not ready after ${TIMEOUT} s ($1); see $FLEET_DIR/*.log"
    sleep 0.5
  done
}

# deploy/nginx/prompthub.conf.template -> $FLEET_DIR/nginx.conf (this fleet's ports and paths)
nginx_conf() {
  local port upstreams="" body_max upload_max
  mkdir -p "$FLEET_DIR/nginx"
  for port in "${API_PORTS[@]}"; do
    upstreams+="        server 127.0.0.1:$port max_fails=${FLEET_MAX_FAILS:-2} fail_timeout=${FLEET_FAIL_TIMEOUT:-5s};"$'\n'
  done
  body_max=$((${PROMPTHUB_MAX_BODY_BYTES:-10485760} + 65536))
  upload_max=$((${PROMPTHUB_MAX_UPLOAD_BYTES:-52428800} + 131072))
  # nginx runs as whoever runs this script; started by root, its workers would switch to `nobody`,
  # who may not reach the fleet folder (private temp dirs): then they keep the invoker's identity
  local user_line=""
  if [ "$(id -u)" = 0 ]; then user_line="user root;"; fi
  FLEET_USER_LINE="$user_line" FLEET_DIR="$FLEET_DIR" FLEET_LISTEN="$LB_HOST:$LB_PORT" FLEET_BODY_MAX="$body_max" \
    FLEET_UPLOAD_MAX="$upload_max" FLEET_UPSTREAMS="${upstreams%$'\n'}" \
    FLEET_MAX_FAILS="${FLEET_MAX_FAILS:-2}" FLEET_FAIL_TIMEOUT="${FLEET_FAIL_TIMEOUT:-5s}" \
    envsubst '${FLEET_USER_LINE} ${FLEET_DIR} ${FLEET_LISTEN} ${FLEET_BODY_MAX} ${FLEET_UPLOAD_MAX} ${FLEET_UPSTREAMS} ${FLEET_MAX_FAILS} ${FLEET_FAIL_TIMEOUT}' \
    <deploy/nginx/prompthub.conf.template >"$FLEET_DIR/nginx.conf"
}

is_loopback() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 || $1 == "[::1]" ]]; }

up() {
  local name port i
  for name in $(names); do
    [ "$name" = s3 ] && [[ " ${FLEET_KEEP:-} " == *" s3 "* ]] && continue
    if live_pid "$name" >/dev/null; then
      die "$name is already running (pid file $FLEET_DIR/$name.pid): run 'make fleet-down' first"
    fi
  done
  if ! is_loopback "$LB_HOST" && [ "${PROMPTHUB_AUTH:-auto}" != required ]; then
    die "nginx on $LB_HOST reaches the replicas from 127.0.0.1: set PROMPTHUB_AUTH=required (and a key)"
  fi
  mkdir -p "$FLEET_DIR/nginx" "$FLEET_DIR/datasets" "$FLEET_DIR/store"

  export PROMPTHUB_DATABASE_URL="$PG/$DB"
  export PROMPTHUB_STORE_URL="${PROMPTHUB_STORE_URL-s3://$BUCKET/store}"
  export PROMPTHUB_STORE_DIR="${PROMPTHUB_STORE_DIR:-$FLEET_DIR/store}"
  export PROMPTHUB_DATA_DIR="${PROMPTHUB_DATA_DIR:-$FLEET_DIR/datasets}"
  export PROMPTHUB_EXECUTOR="${PROMPTHUB_EXECUTOR:-celery}"
  export PROMPTHUB_BROKER_URL="${PROMPTHUB_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//}"
  export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:$S3_PORT}"
  export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-fleet}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-fleet}"
  export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

  # S3: moto's standalone server, and the bucket. moto keeps objects in memory: a new S3 server is
  # an empty store, so the registry of the last fleet (rows of objects now gone) is dropped with it.
  # FLEET_KEEP="s3" on both `down` and `up` keeps the S3 server, and so everything, across restarts.
  local fresh_s3=1
  if live_pid s3 >/dev/null; then
    fresh_s3=0
    log "reusing the running S3 server (pid $(live_pid s3))"
  else
    spawn s3 "$MOTO" -H 127.0.0.1 -p "$S3_PORT"
  fi
  wait_http "http://127.0.0.1:$S3_PORT/moto-api/" "the S3 endpoint"
  if [ $fresh_s3 = 1 ]; then
    curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$S3_PORT/$BUCKET" || die "cannot create bucket $BUCKET"
    if [[ $PROMPTHUB_STORE_URL == s3://* ]] && psql "$PG/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
      log "the S3 server is new (moto keeps objects in memory): dropping database $DB, whose rows name objects it no longer holds"
      psql "$PG/postgres" -qc "DROP DATABASE \"$DB\" WITH (FORCE)" || die "cannot drop database $DB"
    fi
  fi

  # PostgreSQL: the database, migrated once before any replica starts
  if ! psql "$PG/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    psql "$PG/postgres" -qc "CREATE DATABASE \"$DB\"" || die "cannot create database $DB"
  fi
  "$PY" -m app.cli migrate >>"$FLEET_DIR/migrate.log" 2>&1 || die "migration failed: $FLEET_DIR/migrate.log"

  for i in "${!API_PORTS[@]}"; do
    port=${API_PORTS[$i]}
    PROMPTHUB_STORE_CACHE_DIR="$FLEET_DIR/cache-api-$((i + 1))" \
      spawn "api-$((i + 1))" "$PY" -m app.cli serve --no-worker --host 127.0.0.1 --port "$port"
  done
  for ((i = 1; i <= WORKERS; i++)); do
    PROMPTHUB_STORE_CACHE_DIR="$FLEET_DIR/cache-worker-$i" spawn "worker-$i" "$PY" -m app.cli worker
  done

  # nginx: the template rendered with this fleet's ports and paths; daemonises, writes nginx.pid
  nginx_conf
  "$NGINX" -t -q -p "$FLEET_DIR/nginx" -e "$FLEET_DIR/nginx-error.log" -c "$FLEET_DIR/nginx.conf" ||
    die "nginx refused $FLEET_DIR/nginx.conf"
  setsid "$NGINX" -p "$FLEET_DIR/nginx" -e "$FLEET_DIR/nginx-error.log" -c "$FLEET_DIR/nginx.conf" </dev/null
  log "started nginx on $LB_HOST:$LB_PORT (pid $(cat "$FLEET_DIR/nginx.pid"))"

  for i in "${!API_PORTS[@]}"; do
    wait_http "http://127.0.0.1:${API_PORTS[$i]}/readyz" "api-$((i + 1))"
  done
  wait_http "http://$LB_HOST:$LB_PORT/readyz" "nginx"
  log "ready: http://$LB_HOST:$LB_PORT (replicas ${API_PORTS[*]}, $WORKERS workers, S3 :$S3_PORT, db $DB)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  nginx-conf) # render and check the nginx configuration only (tests)
    nginx_conf
    "$NGINX" -t -q -p "$FLEET_DIR/nginx" -e "$FLEET_DIR/nginx-error.log" -c "$FLEET_DIR/nginx.conf"
    echo "$FLEET_DIR/nginx.conf"
    ;;
  *) die "usage: scripts/fleet.sh up|down|status|nginx-conf" ;;
esac
