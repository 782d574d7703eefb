#!/usr/bin/env bash
# Issue 11's GPU measurements in one prepared run, for a session lent a GPU machine that has torch,
# torchvision, numpy, PyYAML, tqdm and pillow but not kornia, torch-lucent, ruamel.yaml or IPython, and no network.
#
#   bash benchmarks/device_check.sh prepare [OLD_REV]   # here: wheels into .whl/, OLD_REV's src into
#                                                       # .device-carry/old/src (default 33002cd)
#   bash benchmarks/device_check.sh run                 # there, with carry [.whl, .device-carry]
#   bash benchmarks/device_check.sh run --small         # the same on a CPU in about a minute (a dry run)
#
# `run` measures: FZ throughput old vs new, with byte identity of their FZs and of two new renders (1.1/pre
# and 2.1/pre, 224 px, 128 channels; on CUDA old and new FZs differ by design since new differentiates the
# transforms through rsi.adjoints, but two new renders must not); ours vs lucent's render_vis per channel; run-to-run, chunk-alone and
# batch-geometry identity with the cost of deterministic cuDNN; 4.1/post in float32 and in TF32; and
# paper_time.py's projection of the whole paper run. Each step has its own time limit (540 s in all, under
# the device's 600 s per command) and a failed step does not stop the others. It prints each step's last
# lines and packs every JSON and log into $OUT/device_check.tgz (default OUT=outputs/device_check): one
# file, since the device tool returns at most 8, re-packed after every step so that a run cut short keeps
# what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
LOCK=requirements.lock
WHEELS=(kornia torch-lucent ruamel.yaml decorator ipython ipython_pygments_lexers jedi parso matplotlib-inline
    pexpect ptyprocess prompt_toolkit wcwidth stack-data executing asttokens pure_eval traitlets)

pinned() { # NAME==VERSION from the lock (the one install path), case and -/_ insensitive
    local key
    key=$(echo "$1" | tr 'A-Z_' 'a-z-')
    grep -v '^#' "$LOCK" | awk -F'==' -v k="$key" '{n=tolower($1); gsub("_","-",n); if (n==k) print $1"=="$2}' |
        sed 's/[ ;].*//'
}

if [[ $mode == prepare ]]; then
    rev=${2:-33002cd}
    rm -rf .whl .device-carry && mkdir -p .whl .device-carry/old
    for name in "${WHEELS[@]}"; do
        spec=$(pinned "$name")
        [[ -n $spec ]] || { echo "device_check: $name is not in $LOCK" >&2; exit 2; }
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec" || exit 2
    done
    git archive "$rev" src | tar -x -C .device-carry/old || exit 2
    du -sh .whl .device-carry
    echo "prepared: run   bash benchmarks/device_check.sh run   on the device with carry [.whl, .device-carry]"
    exit 0
fi
[[ $mode == run ]] || { echo "usage: $0 prepare [OLD_REV] | run [--small]" >&2; exit 2; }

small=${2:-}
OUT=${OUT:-outputs/device_check}
mkdir -p "$OUT"
work=$(mktemp -d)
if ! python3 -c "import kornia, lucent, IPython, ruamel.yaml" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
[[ -d .device-carry/old/src/rsi ]] || { echo "no .device-carry/old/src: run '$0 prepare' first" >&2; exit 2; }

if [[ $small == --small ]]; then
    device=cpu size=48 steps=3 channels=4 lucent=1 paper=(--small)
else
    device=cuda size=224 steps=30 channels=128 lucent=8 paper=(--steps 40 --images 1024)
fi
card=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')")
echo "card: $card" | tee "$work/card.txt"

step() { # NAME SECONDS COMMAND...: run with a time limit, log to NAME.log, go on after a failure
    local name=$1 seconds=$2
    shift 2
    echo "== $name"
    local started=$SECONDS
    timeout "$seconds" "$@" >"$work/$name.log" 2>&1
    local rc=$?
    grep -v -i "warn" "$work/$name.log" | tail -n 12
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    tar czf "$OUT/device_check.tgz" -C "$work" .
}

step old_vs_new 180 python3 benchmarks/fz_old_vs_new.py --old-src .device-carry/old/src --device "$device" \
    --size "$size" --steps "$steps" --channels "$channels" --taps 2.1/pre 1.1/pre --rounds 2 --count-calls \
    --json "$work/old_vs_new.json"
step lucent 60 python3 benchmarks/fz_throughput.py --device "$device" --size "$size" --steps "$steps" \
    --channels "$channels" --lucent-channels "$lucent" --tap 2.1/pre --rounds 1 --json "$work/lucent.json"
step determinism 60 python3 benchmarks/fz_determinism.py --device "$device" --size "$size" --steps "$steps" \
    --channels $((channels / 2)) --json "$work/determinism.json"
# the deep taps are most of the paper's FZ time: float32 (the default) against fz.tf32 (declared)
for precision in float32 tf32; do
    step "deep_$precision" 45 python3 benchmarks/fz_throughput.py --device "$device" --size "$size" \
        --steps "$steps" --channels "$channels" --tap 4.1/post --skip-lucent --rounds 1 \
        $([[ $precision == tf32 ]] && echo --tf32) --json "$work/deep_$precision.json"
done
# activations through this package's copying taps (no thingsvision there; the same values, tested)
python3 - "$work/params.yaml" <<'EOF'
import sys, yaml
from rsi.config import read_params  # as DVC reads it (YAML 1.2)
params = read_params("params.yaml")
params["activations"]["extractor"] = "taps"
yaml.safe_dump(params, open(sys.argv[1], "w"))
EOF
step paper_time 150 python3 benchmarks/paper_time.py --params "$work/params.yaml" --device "$device" \
    "${paper[@]}" --label "1x $card" --json "$work/paper_time.json"
