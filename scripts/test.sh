#!/usr/bin/env bash
# The test command of the README and CI: lint, Dockerfile lint, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RSI_VENV:-.venv}"
[ -x "$venv/bin/python" ] || bash scripts/install.sh
export PATH="$PWD/$venv/bin:$PATH"
ruff check .
ruff format --check .
hadolint Dockerfile
python -m pytest "$@"
