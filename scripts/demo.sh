#!/usr/bin/env bash
# The newcomer's demo: install from requirements.lock, then run the whole pipeline on the CPU in a
# separate DVC workspace (demo/, ignored by git) with params.demo.yaml: a few channels of one block,
# few FZ steps, a small labelled image set. Outputs: demo/outputs/figures/*.png, demo/outputs/report.md,
# demo/metrics/*.json.
#
# demo/ is its own git repository (ignored by the project's): the first run is committed there as the
# baseline (dvc.lock, params.yaml, metrics, plots), so the researcher's loop works on a laptop:
#   cd demo && dvc exp run -S criteria.eq2_high=2.0 && dvc exp show && dvc metrics diff && dvc plots diff
# Later runs leave that history alone (no new commit), with two exceptions. A run refuses to start while
# demo/params.yaml has uncommitted edits (it rewrites that file from params.demo.yaml, which would discard
# them). And a run in the other mode than the last commit's (--offline after an online run, or the reverse)
# commits itself as a new baseline, saying so: `dvc metrics diff` would otherwise compare real weights
# with random ones.
#
#   bash scripts/demo.sh              real weights (fetched once into data/) and Imagenette (downloaded
#                                     once, checked), the paper's model on a 10-class ImageNet subset
#   bash scripts/demo.sh --offline    no network: explicitly random weights and generated images;
#                                     every output is labelled RANDOM WEIGHTS / GENERATED DATA
#   bash scripts/demo.sh --no-install  use the rsi and dvc already on PATH (tests)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
mode="online"
install=1
for arg in "$@"; do
  case "$arg" in
    --offline) mode="offline" ;;
    --no-install) install=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $arg (use --offline, --no-install or nothing)" >&2; exit 2 ;;
  esac
done

# demo/params.yaml is rewritten below: a researcher's uncommitted edits there (`dvc exp run -S` leaves
# its last experiment's params in the workspace) would be lost without a word. What this script wrote
# last (kept in demo/.git, untracked) is no one's edit: a changed params.demo.yaml leaves it uncommitted.
written=demo/.git/rsi-demo-params.yaml
if [ -d demo/.git ] && git -C demo rev-parse -q --verify HEAD >/dev/null \
  && ! git -C demo diff --quiet HEAD -- params.yaml && ! cmp -s demo/params.yaml "$written"; then
  echo "demo.sh: demo/params.yaml has uncommitted changes, which this run would overwrite; commit them" \
    "(git -C demo commit -am ...) or discard them (git -C demo checkout params.yaml), then run it again" >&2
  exit 1
fi

if [ "$install" = 1 ]; then
  bash scripts/install.sh
  venv=${RSI_VENV:-.venv}
  case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
  export PATH="$venv/bin:$PATH"
fi
export DVC_NO_ANALYTICS=1

# the mode of the last commit's run: random weights are the offline demo's
committed_mode=""
if [ -d demo/.git ] && git -C demo rev-parse -q --verify HEAD >/dev/null; then
  committed_mode=$(git -C demo show HEAD:params.yaml 2>/dev/null | python -c '
import sys, yaml
params = yaml.safe_load(sys.stdin) or {}
weights = str((params.get("model") or {}).get("weights", ""))
print("offline" if weights.startswith("random:") else "online")' || true)
fi

mkdir -p demo
ln -sfn "$root/src" demo/src
cp dvc.yaml demo/dvc.yaml
mkdir -p demo/paper
cp paper/passing_counts.csv demo/paper/passing_counts.csv # the paper's counts, beside this run's in the plot
if [ "$mode" = offline ]; then
  python -m rsi.demo_params --offline params.demo.yaml > demo/params.yaml
else
  if ! rsi fetch-weights --out "$root/data/resnet18-f37072fd.pth"; then
    echo "demo.sh: the real weights could not be had (offline?). Run 'bash scripts/demo.sh --offline' for" >&2
    echo "         the same pipeline on explicitly random weights and generated images." >&2
    exit 1
  fi
  python -m rsi.demo_params params.demo.yaml --weights "$root/data/resnet18-f37072fd.pth" > demo/params.yaml
fi
cd demo
if [ ! -d .git ]; then
  git init -q
  # a demo/ made before it was a git repository: DVC was told there is none
  [ -d .dvc ] && dvc config --unset core.no_scm 2>/dev/null || true
fi
# src links to this checkout; dvc_plots/ is what `dvc plots diff` draws; outputs/.resume (finished FZ
# chunks and locks naming pid, host and time) and outputs/.launch (worker logs) are scratch that would
# dirty `git status` after every experiment. Added where missing, so an older demo/ gets them too.
for line in /src /dvc_plots/ /outputs/.resume/ /outputs/.launch/; do
  grep -qxF -- "$line" .gitignore 2>/dev/null || echo "$line" >> .gitignore
done
cp params.yaml .git/rsi-demo-params.yaml # what this script wrote (see the check at the top)
[ -d .dvc ] || dvc init -q
if ! git rev-parse -q --verify HEAD >/dev/null || { [ -n "$committed_mode" ] && [ "$committed_mode" != "$mode" ]; }; then
  # this run becomes the baseline (committed below): DVC stages what it writes instead of printing a
  # "git add" hint for files this script commits anyway; a later `dvc repro` by hand prints it again
  dvc config --local core.autostage true
  trap 'dvc config --local --unset core.autostage' INT TERM  # Ctrl-C too: a later repro stages nothing
  status=0
  dvc repro || status=$?
  trap - INT TERM
  dvc config --local --unset core.autostage
  [ "$status" = 0 ] || exit "$status"
else
  dvc repro
fi
if ! git rev-parse -q --verify HEAD >/dev/null; then
  # the baseline: git needs an identity; a local one only where none is configured
  git config user.email >/dev/null || git config user.email "demo@rsi.invalid"
  git config user.name >/dev/null || git config user.name "rsi demo"
  git add -A
  git commit -q -m "demo baseline: scripts/demo.sh --$mode"
  echo "demo/ baseline committed: try  cd demo && dvc exp run -S criteria.eq2_high=2.0 && dvc exp show && dvc metrics diff"
elif [ -n "$committed_mode" ] && [ "$committed_mode" != "$mode" ]; then
  # `dvc metrics diff` / `dvc plots diff` compare with HEAD: a baseline of the other mode would set real
  # weights against random ones (or the reverse), so this run becomes the baseline; the old one stays in
  # git log
  git add -A
  git commit -q -m "demo baseline: scripts/demo.sh --$mode (replaces the $committed_mode baseline)"
  echo "demo.sh: demo/'s last commit was the $committed_mode demo, this run the $mode one: committed it as" \
    "the new baseline, so dvc metrics diff compares with it (the $committed_mode run stays in git log)"
fi
echo
echo "demo finished: demo/outputs/report.md, demo/outputs/figures/, demo/metrics/"
