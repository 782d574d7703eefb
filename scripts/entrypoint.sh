#!/bin/sh
# The image's entry point (/usr/local/bin/rsi-entrypoint): makes any uid a working user, then runs the
# command (default `dvc repro`) in the working directory, /repo: the image's own copy of the repository,
# or a host clone mounted over it (`docker run --user "$(id -u):$(id -g)" -v "$PWD":/repo rsi dvc exp …`).
#
# `docker run --user <uid>` with a uid the image does not know sets HOME=/ (not writable), so git, DVC,
# pip and matplotlib would find no home for their config and caches: a HOME that is missing or not
# writable becomes RSI_SPARE_HOME (default /tmp/home), and a nameless uid gets USER=uid<N>. Git's "dubious ownership" check for a mounted
# clone owned by another uid is answered in the image's system gitconfig (safe.directory), not here.
# A working directory this uid cannot write is named before DVC fails on it.
set -eu

if [ -z "${HOME:-}" ] || [ ! -d "$HOME" ] || [ ! -w "$HOME" ]; then
  HOME=${RSI_SPARE_HOME:-/tmp/home}
  mkdir -p "$HOME"
  export HOME
fi
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$HOME/.cache}"
export MPLCONFIGDIR="${MPLCONFIGDIR:-$XDG_CACHE_HOME/matplotlib}"
mkdir -p "$XDG_CACHE_HOME" "$MPLCONFIGDIR"

# A uid without a passwd entry has no user name, and Python's getpass.getuser() (DVC calls it) then fails
# ("getpwuid(): uid not found") unless USER or LOGNAME names one.
if ! id -un >/dev/null 2>&1; then
  export USER="${USER:-uid$(id -u)}" LOGNAME="${LOGNAME:-uid$(id -u)}"
fi

# dvc exp run commits experiments (and stashes uncommitted changes) to git refs: without an identity
# in the clone's or the user's git config, git refuses; this one applies only where none is configured.
if command -v git >/dev/null 2>&1 && ! git config user.email >/dev/null 2>&1; then
  export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-rsi container}" GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-rsi@container.invalid}"
  export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}" GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"
fi

if [ ! -w "$PWD" ]; then
  echo "rsi-entrypoint: $PWD is not writable by uid $(id -u); run the container as its owner:" \
    "docker run --user \"\$(id -u):\$(id -g)\" -v \"\$PWD\":/repo rsi …" >&2
fi
# -v "$PWD/outputs":/repo/outputs with a folder the host did not have: Docker makes it, owned by root
for folder in outputs metrics plots; do
  if [ -d "$folder" ] && [ ! -w "$folder" ]; then
    echo "rsi-entrypoint: $PWD/$folder is not writable by uid $(id -u) (its owner is uid" \
      "$(stat -c %u "$folder")): on the host, make it before docker run and let uid $(id -u) write it" \
      "(mkdir -p $folder && chmod a+rwx $folder), or mount your whole clone and run as yourself" \
      "(docker run --user \"\$(id -u):\$(id -g)\" -v \"\$PWD\":/repo …)" >&2
  fi
done

exec "$@"
