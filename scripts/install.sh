#!/usr/bin/env bash
# Install rsi and its pinned dependencies from requirements.lock into .venv (or $RSI_VENV).
# The same commands run in the Dockerfile and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RSI_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
fi
# The lock holds torch's CUDA build: about 7 GiB once installed. Say so before pip runs out of disk halfway.
free_kib=$(df -Pk "$(dirname "$venv")" | awk 'NR == 2 {print $4}')
if [ "${free_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
  echo "install.sh: warning: $((free_kib / 1024 / 1024)) GiB free beside $venv; the lock needs about 8 GiB" >&2
fi
# --no-cache-dir: the wheels are installed once; a second copy in pip's cache only costs disk.
# pip keeps every wheel it downloaded until its command ends, so one call over the whole lock needs the
# CUDA wheels' ~3 GiB on top of the ~7 GiB they unpack to. The large wheels go one per call, which
# frees each download before the next: the peak is the install plus the largest wheel (~0.6 GiB).
large='^(nvidia-[a-z0-9-]+|torch|triton|tensorflow-cpu)=='
rest=$(mktemp)
trap 'rm -f "$rest"' EXIT
grep -vE "$large" requirements.lock > "$rest"
for req in $(grep -E "$large" requirements.lock); do
  "$venv/bin/python" -m pip install --quiet --no-cache-dir --no-deps "$req"
done
"$venv/bin/python" -m pip install --quiet --no-cache-dir --no-deps -r "$rest"
"$venv/bin/python" -m pip install --quiet --no-cache-dir --no-deps --no-build-isolation -e .
echo "installed rsi into $venv; activate with: source $venv/bin/activate"
