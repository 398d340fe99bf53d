#!/usr/bin/env bash
# Headless Chromium for the report rendering tests and the console's browser tests (Playwright
# drives it through executable_path; Debian's chromium package, never a downloaded browser).
# Installed when missing and we are root with apt-get. Under CI=true a missing browser is an
# error; elsewhere those tests skip with a message.
set -uo pipefail
have() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
if ! have && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Chromium missing: installing it"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core) >/dev/null 2>&1
fi
if ! have; then
  echo "headless Chromium is not installed (apt-get install chromium)"
  if [ "${CI:-}" = "true" ]; then
    echo "CI=true: the report rendering and console browser tests need it; failing." >&2
    exit 1
  fi
fi
exit 0
