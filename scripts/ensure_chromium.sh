#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the console's browser tests (tests/e2e/
# test_console.py), which drive it with Playwright's Python package. Playwright's own browser
# downloads are never used: the browser comes from the distribution's packages, like PostgreSQL.
set -euo pipefail
browser=/usr/bin/chromium
if [ -x "$browser" ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no $browser and no apt-get: install Chromium so that $browser exists" >&2; exit 1
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "installing Chromium needs root (apt-get install chromium)" >&2; exit 1; }
  sudo=(sudo)
fi
echo "installing Chromium (apt-get install chromium) for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q >&2
"${sudo[@]}" apt-get install -y -q chromium >&2
[ -x "$browser" ] || { echo "apt-get installed chromium but $browser is missing" >&2; exit 1; }
