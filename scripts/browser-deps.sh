#!/usr/bin/env bash
# Installs what the browser tests (tests/console, marked `browser`) need: Debian's chromium and
# chromium-driver, and Playwright for Python (the dev extra; it drives /usr/bin/chromium, no browser
# download). Idempotent. Never fails the caller: without apt or root it says so loudly and the
# browser tests skip with the same reason.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -x /usr/bin/chromium ]; then
  :
elif ! command -v apt-get >/dev/null 2>&1; then
  echo "browser-deps: *** apt-get not available: Chromium not installed, the browser tests will SKIP ***" >&2
elif [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "browser-deps: *** not root and no sudo: Chromium not installed, the browser tests will SKIP ***" >&2
else
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo -n"
  echo "browser-deps: installing chromium and chromium-driver (apt)" >&2
  { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver; } \
    >/tmp/prompthub-browser-deps.log 2>&1 \
    || echo "browser-deps: *** apt-get install chromium failed (see /tmp/prompthub-browser-deps.log): the browser tests will SKIP ***" >&2
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import playwright" 2>/dev/null; then
  .venv/bin/python -m pip --disable-pip-version-check -q install "playwright>=1.40" \
    || echo "browser-deps: *** pip install playwright failed: the browser tests will SKIP ***" >&2
fi
exit 0
