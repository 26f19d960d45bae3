#!/usr/bin/env bash
# System programs the tests use, installed from Debian's packages when missing and we
# may (root, apt): chromium for the console's browser tests (Playwright never downloads
# one here), gcc to build darknet's own detection layer for tests/test_darknet.py, and
# libb64, which the perf_analyzer binary in tritonclient's wheel links against.
have_root_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
install() {  # package, what it is for
  if ! have_root_apt; then
    echo "no $1, and no root apt-get to install it: $2"
    return 0
  fi
  echo "installing Debian's $1 (log: /tmp/$1-apt.log)"
  { apt-get install -y -q "$1" || { apt-get update -q && apt-get install -y -q "$1"; }; } \
    >"/tmp/$1-apt.log" 2>&1 || echo "could not install $1: see /tmp/$1-apt.log"
}
command -v chromium >/dev/null 2>&1 || install chromium "the browser tests will be skipped"
command -v gcc >/dev/null 2>&1 || install gcc "tests/test_darknet.py will fail"
ldconfig -p 2>/dev/null | grep -q libb64.so.0d || install libb64-0d "the perf_analyzer test will fail"
exit 0
