#!/usr/bin/env bash
# Installs Debian's nginx for the tests that run a fleet behind it (tests/fleet, tests/test_deploy:
# the rendered template is checked with `nginx -t`, and the fleet test sends its traffic through
# nginx). Idempotent. Never fails the caller: without apt or root it says so loudly and those tests
# skip with the same reason. The package's own service is not needed: the tests start nginx
# themselves with a rendered config on free ports.
set -uo pipefail
if [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; then
  exit 0
elif ! command -v apt-get >/dev/null 2>&1; then
  echo "nginx-deps: *** apt-get not available: nginx not installed, the fleet/nginx tests will SKIP ***" >&2
elif [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "nginx-deps: *** not root and no sudo: nginx not installed, the fleet/nginx tests will SKIP ***" >&2
else
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo -n"
  echo "nginx-deps: installing nginx (apt)" >&2
  # wait for another apt run (e.g. the browser deps) instead of failing on its lock
  { $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q \
      && DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q nginx; } \
    >/tmp/prompthub-nginx-deps.log 2>&1 \
    || echo "nginx-deps: *** apt-get install nginx failed (see /tmp/prompthub-nginx-deps.log): the fleet/nginx tests will SKIP ***" >&2
fi
exit 0
