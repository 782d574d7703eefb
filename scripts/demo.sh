#!/usr/bin/env bash
# The newcomer's demo: install from requirements.lock, then run the whole pipeline on the CPU in a
# separate DVC workspace (demo/, ignored by git) with params.demo.yaml: a few channels of one block,
# few FZ steps, a small labelled image set. Outputs: demo/outputs/figures/*.png, demo/outputs/report.md,
# demo/metrics/*.json.
#
#   bash scripts/demo.sh              real weights (fetched once into data/) and Imagenette (downloaded
#                                     once, checked), the paper's model on a 10-class ImageNet subset
#   bash scripts/demo.sh --offline    no network: explicitly random weights and generated images;
#                                     every output is labelled RANDOM WEIGHTS / GENERATED DATA
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
mode="online"
for arg in "$@"; do
  case "$arg" in
    --offline) mode="offline" ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $arg (use --offline or nothing)" >&2; exit 2 ;;
  esac
done

bash scripts/install.sh
export PATH="$root/${RSI_VENV:-.venv}/bin:$PATH" DVC_NO_ANALYTICS=1

mkdir -p demo
ln -sfn "$root/src" demo/src
cp dvc.yaml demo/dvc.yaml
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
[ -d .dvc ] || dvc init --no-scm -q
dvc repro
echo
echo "demo finished: demo/outputs/report.md, demo/outputs/figures/, demo/metrics/"
