#!/usr/bin/env bash
# The console's browser tests drive the system's Chromium (Playwright never downloads
# one here). Install Debian's package when it is missing and we may (root, apt).
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "no chromium, and no root apt-get to install it: the browser tests will be skipped"
  exit 0
fi
echo "installing Debian's chromium for the browser tests (log: /tmp/chromium-apt.log)"
{ apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } \
  >/tmp/chromium-apt.log 2>&1 || echo "could not install chromium: see /tmp/chromium-apt.log"
