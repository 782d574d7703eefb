#!/usr/bin/env bash
# The test command of the README and CI: lint, Dockerfile lint, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RSI_VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac # RSI_VENV may be absolute or relative to the checkout
[ -x "$venv/bin/python" ] || bash scripts/install.sh
export PATH="$venv/bin:$PATH"
ruff check .
ruff format --check .
hadolint Dockerfile
python -m pytest "$@"
