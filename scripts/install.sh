#!/usr/bin/env bash
# Install rsi and its pinned dependencies from requirements.lock into .venv (or $RSI_VENV).
# The same script runs in the Dockerfile and in CI.
#
#   --keep-pip-cache  let pip keep the wheels it downloads in its cache (the Dockerfile: a build cache
#                     mount outside the image, so a rebuild after a code change downloads nothing).
#                     Elsewhere the wheels are installed once and a second copy only costs disk.
set -euo pipefail
cache=(--no-cache-dir)
case "$#:${1:-}" in
  0:) ;;
  1:--keep-pip-cache) cache=() ;;
  1:-h | 1:--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "install.sh: unknown option(s) '$*' (the one option is --keep-pip-cache; --help)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
venv="${RSI_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
fi
# The lock is for CPython 3.11 (tensorflow-cpu 2.15.1, which thingsvision needs, has no 3.12 wheel):
# another version would fail partway through a multi-GB install.
version=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$version" != 3.11 ]; then
  echo "install.sh: $venv has Python $version; the lock needs 3.11. Install python3.11 (and its venv" \
    "module), remove $venv and run this again, or set RSI_VENV to a 3.11 environment" >&2
  exit 1
fi
# The lock holds torch's CUDA build: about 7 GiB once installed. Say so before pip runs out of disk halfway.
free_kib=$(df -Pk "$(dirname "$venv")" | awk 'NR == 2 {print $4}')
if [ "${free_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
  echo "install.sh: warning: $((free_kib / 1024 / 1024)) GiB free beside $venv; the lock needs about 8 GiB" >&2
fi
pip=("$venv/bin/python" -m pip install --quiet "${cache[@]}" --no-deps)
# pip keeps every wheel it downloaded until its command ends, so one call over the whole lock needs the
# CUDA wheels' ~3 GiB on top of the ~7 GiB they unpack to. The large wheels go one per call, which
# frees each download before the next: the peak is the install plus the largest wheel (~0.55 GB, torch's
# or cuDNN's). Every line of the lock is a plain `name==version` pin (tests/test_dockerfile.py).
large='^(nvidia-[a-z0-9-]+|torch|triton|tensorflow-cpu)=='
rest=$(mktemp)
trap 'rm -f "$rest"' EXIT
grep -vE "$large" requirements.lock > "$rest"
mapfile -t large_wheels < <(grep -E "$large" requirements.lock)
for requirement in "${large_wheels[@]}"; do
  "${pip[@]}" "$requirement"
done
"${pip[@]}" -r "$rest"
"${pip[@]}" --no-build-isolation -e .
echo "installed rsi into $venv; activate with: source $venv/bin/activate"
