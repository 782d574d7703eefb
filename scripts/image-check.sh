#!/usr/bin/env bash
# Build the Dockerfile's `environment` stage (everything but the weights) and check the image from
# inside, offline (--network none), as its non-root user:
#   1. Python 3.11 final (built in the `python` stage), `rsi` and `dvc` on PATH, the lock's packages import;
#   2. the test suite without the slow tests;
#   3. the image's own command, `dvc repro` in /repo (no .git, core.no_scm), on the offline demo profile,
#      and that it wrote the report, the figures and the metrics;
#   4. the plain command with the paper's params and no ImageNet mounted stops and names what is missing;
#   5. the image as the toolchain of a host clone: a fresh clone of this repository's HEAD (commit first)
#      mounted at /repo and driven as its owner, uid 1000 (the image's user) and uid 4242 (unknown to the
#      image): the offline demo profile as a committed baseline, `dvc exp run -S criteria.eq2_high=…`
#      (no FZ re-render), `dvc exp show`, `dvc metrics diff`, `dvc plots diff`; and git reading a clone
#      owned by another uid (safe.directory).
# The final stage only adds `rsi fetch-weights` (download.pytorch.org) and CMD; build it where that
# host is reachable: `docker build -t rsi .`.
#
#   bash scripts/image-check.sh              base as the Dockerfile pins it (nvidia/cuda, Docker Hub)
#   bash scripts/image-check.sh --stand-in   no Docker Hub: an Ubuntu 22.04 base made with debootstrap
#                                            from Ubuntu's archive (root, debootstrap), carrying this
#                                            host's CA bundle for TLS-intercepting networks
# Needs a running Docker daemon (>= 20.10, with BuildKit; DOCKER=/path/to/docker picks the client).
set -euo pipefail
cd "$(dirname "$0")/.."
stand_in=0
for arg in "$@"; do
  case "$arg" in
    --stand-in) stand_in=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "image-check.sh: unknown option $arg (use --stand-in or nothing)" >&2; exit 2 ;;
  esac
done
docker=${DOCKER:-docker}
image=rsi:environment
build_args=()
cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT
export DOCKER_BUILDKIT=1
# BuildKit with RUN --mount (the Dockerfile has no `# syntax=` line) is built into docker clients 20.10 to
# 22.x and a plugin (buildx) after: any other client without the plugin would fail after the base is made
if ! "$docker" buildx version >/dev/null 2>&1; then
  client=$("$docker" version --format '{{.Client.Version}}' 2>/dev/null || echo unknown)
  case "$client" in
    20.10.*|2[12].*) ;;
    *)
      echo "image-check.sh: $docker (client $client) builds with BuildKit only through the buildx plugin," \
        "which is missing: install it (Debian/Ubuntu: docker-buildx), or point DOCKER= at a client" \
        "20.10-22.x, whose BuildKit is built in (e.g. DOCKER=/usr/bin/docker from Debian's docker.io)" >&2
      exit 2 ;;
  esac
fi

if [ "$stand_in" = 1 ]; then
  base=rsi-stand-in/ubuntu:22.04
  if ! "$docker" image inspect "$base" >/dev/null 2>&1; then
    root=$(mktemp -d)
    cleanup+=("$root")
    debootstrap --variant=minbase --components=main,universe jammy "$root" http://archive.ubuntu.com/ubuntu/
    # the suites the ubuntu:22.04 image lists (the CUDA images build on it)
    printf 'deb http://archive.ubuntu.com/ubuntu/ jammy%s main restricted universe multiverse\n' \
      "" -updates -backports > "$root/etc/apt/sources.list"
    echo 'deb http://security.ubuntu.com/ubuntu/ jammy-security main restricted universe multiverse' \
      >> "$root/etc/apt/sources.list"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/host-ca-bundle.crt"
    tar -C "$root" -c . | "$docker" import \
      --change 'ENV PIP_CERT=/etc/host-ca-bundle.crt SSL_CERT_FILE=/etc/host-ca-bundle.crt' \
      --change 'CMD ["bash"]' - "$base"
  fi
  build_args=(--build-arg "BASE_IMAGE=$base" --network host)
fi

step() { printf '\n== %s\n' "$*"; }
in_image() { "$docker" run --rm --network none "$image" bash -c "$1"; }

step "build the environment stage"
"$docker" build --target environment -t "$image" "${build_args[@]}" .

step "1. interpreter, commands, imports"
in_image 'set -e; python --version; command -v rsi dvc; whoami
python -c "import sys; assert sys.version_info[:2] == (3, 11) and sys.version_info.releaselevel == \"final\""
python -c "import torch, torchvision, lucent, thingsvision, kornia, rsi; print(torch.__version__, torchvision.__version__, kornia.__version__)"'

step "2. tests (not slow)"
in_image 'python -m pytest -q -m "not slow" -p no:cacheprovider'

step "3. the image command, dvc repro, on the offline demo profile"
in_image 'set -eo pipefail
python -m rsi.demo_params --offline params.demo.yaml > /tmp/params.yaml && cp /tmp/params.yaml params.yaml
dvc repro 2>&1 | tee /tmp/repro.log
if grep -q "Permission denied" /tmp/repro.log; then echo "a stage could not write somewhere" >&2; exit 1; fi
ls outputs/report.md outputs/figures/*.png metrics/*.json
grep -c "RANDOM WEIGHTS" outputs/report.md'

step "4. the plain command without ImageNet"
set +e
out=$("$docker" run --rm --network none "$image" dvc repro 2>&1)
code=$?
set -e
echo "$out" | tail -5
if [ "$code" = 0 ] || ! echo "$out" | grep -q "data.root = '/data/imagenet/val': no such folder" \
  || echo "$out" | grep -q "download"; then
  echo "image-check.sh: expected dvc repro to stop naming the missing /data/imagenet/val, downloading nothing (exit $code)" >&2
  exit 1
fi

step "5. a fresh clone mounted at /repo, driven as uid 1000 and as uid 4242"
work=$(mktemp -d)
cleanup+=("$work")
git clone -q "$PWD" "$work/uid1000"
chown -R 1000:1000 "$work/uid1000"
as_owner() { # uid, clone, script: `docker run --user uid:uid -v clone:/repo` as the README shows
  "$docker" run --rm --network none --user "$1:$1" -v "$2":/repo "$image" bash -c "set -eo pipefail; $3"
}
experiment='set -eo pipefail; dvc exp run -S criteria.eq2_high=$0 2>&1 | tee /tmp/exp.log
if grep -q "Running stage .fz@" /tmp/exp.log; then echo "the experiment re-rendered FZs" >&2; exit 1; fi
grep -q "Running stage .criteria" /tmp/exp.log
dvc exp show
dvc metrics diff --all
dvc plots diff --json > /tmp/plots.json
python -c "import json; assert json.load(open(\"/tmp/plots.json\"))[\"data\"][\"passing_counts\"]"'
commit='git -c user.name=image-check -c user.email=image-check@rsi.invalid commit -q'
as_owner 1000 "$work/uid1000" "echo \"HOME=\$HOME\"; git status --short | head -3
python -m rsi.demo_params --offline params.demo.yaml > /tmp/params.yaml && cp /tmp/params.yaml params.yaml
dvc repro -q
git add -A && $commit -m 'baseline: the offline demo profile'
bash -c '$experiment' 2.0"
# another uid, unknown to the image (HOME=/): the same checkout with its cache, owned by that uid
cp -a "$work/uid1000" "$work/uid4242"
chown -R 4242:4242 "$work/uid4242"
as_owner 4242 "$work/uid4242" "echo \"HOME=\$HOME\"; bash -c '$experiment' 1.8"
# git trusts a clone whose owner is not the running uid (safe.directory), read-only
as_owner 4242 "$work/uid1000" 'git status --short && git log --oneline -1'
step "image check passed"
