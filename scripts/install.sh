#!/usr/bin/env bash
# Install rsi and its pinned dependencies from requirements.lock into .venv (or $RSI_VENV).
# The same commands run in the Dockerfile and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RSI_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --no-deps -r requirements.lock
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
echo "installed rsi into $venv; activate with: source $venv/bin/activate"
