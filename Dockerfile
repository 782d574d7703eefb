# rsi: the whole pipeline in a CUDA container.
#
#   docker build -t rsi .
#   docker run --gpus all -v "$IMAGENET":/data/imagenet:ro rsi            # = dvc repro
#   docker run --gpus all -v "$IMAGENET":/data/imagenet:ro -v "$PWD/outputs":/repo/outputs rsi
#   docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD":/repo -v "$IMAGENET":/data/imagenet:ro \
#     rsi dvc exp run -S criteria.eq2_high=2.0     # the image as the toolchain of a host clone (git inside)
#
# Base: torch 2.14.1 in requirements.lock is a CUDA 13.0 build whose CUDA libraries (cuBLAS, cuDNN, NCCL
# ...) come as pip wheels, so the image only needs a CUDA 13.0 runtime userland and the host's driver
# (>= 580, injected by the NVIDIA container toolkit). Pinned to an exact tag, never `latest`. BASE_IMAGE
# exists for builds that cannot reach Docker Hub: scripts/image-check.sh builds the `environment` stage on
# a stand-in Ubuntu 22.04 made from Ubuntu's archive. No `# syntax=` line: a floating frontend tag would
# be one more unpinned download; the built-in frontend of Docker >= 20.10 has RUN --mount.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu22.04

# Stage `python`: CPython 3.11 built from a SHA-256-pinned source archive. Ubuntu 22.04's own python3.11
# is the release candidate 3.11.0rc1 (jammy never got 3.11 final), on which torch does not import
# (`sys.get_int_max_str_digits` arrived in 3.11.0rc2); 3.11 because tensorflow-cpu 2.15 in the lock, which
# thingsvision imports, has no 3.12 wheels. The default archive is Debian bookworm's copy of python.org's
# Python-3.11.2.tgz, its SHA-256 from Debian's signed source index; for a newer 3.11.x set all three
# arguments (e.g. https://www.python.org/ftp/python/3.11.14/Python-3.11.14.tgz and its SHA-256).
FROM ${BASE_IMAGE} AS python
ARG PYTHON_VERSION=3.11.2
ARG PYTHON_SOURCE=https://deb.debian.org/debian/pool/main/p/python3.11/python3.11_3.11.2.orig.tar.gz
ARG PYTHON_SHA256=2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates curl libbz2-dev \
       libffi-dev liblzma-dev libncursesw5-dev libreadline-dev libsqlite3-dev libssl-dev uuid-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/python
RUN curl -fsSL "$PYTHON_SOURCE" -o python.tgz \
    && echo "$PYTHON_SHA256  python.tgz" | sha256sum --check --strict - \
    && tar -xzf python.tgz --strip-components=1 \
    && ./configure --prefix=/opt/python --with-ensurepip=install --without-static-libpython \
    && make -j"$(nproc)" \
    && make install \
    && /opt/python/bin/python3.11 -c "import sys, ssl, ctypes, sqlite3, lzma, bz2, zlib, uuid, readline; \
assert sys.version.startswith('$PYTHON_VERSION '), sys.version; sys.get_int_max_str_digits()"

# Stage `environment`: the CUDA runtime base, that Python, the locked packages and the repository;
# everything but the weights.
FROM ${BASE_IMAGE} AS environment

# The shared libraries the Python above links against (most are in the base already),
# ca-certificates for the HTTPS download of the weights, and git for `dvc exp` / `dvc metrics diff` on a
# host clone mounted at /repo. Every Python package comes from requirements.lock below.
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git libbz2-1.0 libffi8 liblzma5 \
       libncursesw6 libreadline8 libsqlite3-0 libssl3 libuuid1 zlib1g \
    && rm -rf /var/lib/apt/lists/*
# A mounted clone is owned by the host user, whose uid the image may not know: without this git refuses
# it ("detected dubious ownership") and DVC then sees no repository. System-wide, so any uid has it.
RUN git config --system --add safe.directory '*'
# DL3008 (pin apt versions) is ignored on purpose: the archive drops superseded versions of these
# packages, so exact pins break the build within months; the tag above fixes the Ubuntu release, the
# SHA-256 fixes Python and requirements.lock fixes every Python package.
COPY --from=python /opt/python /opt/python

# The venv lives outside the repo (scripts/install.sh honours RSI_VENV); its bin/ first on PATH puts
# `rsi` and `dvc` there. TORCH_HOME: torchvision's weights cache, readable by the non-root user.
ENV RSI_VENV=/opt/venv \
    PATH=/opt/venv/bin:/opt/python/bin:$PATH \
    TORCH_HOME=/opt/torch \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

# Run as an ordinary user: everything it writes (venv, weights, repo, DVC cache) is its own. ~/.cache is
# made here so that it is the user's: the pip cache mount below would create it as root, and matplotlib
# then finds no writable config folder.
RUN useradd --create-home --uid 1000 --shell /bin/bash rsi \
    && mkdir -p /opt/venv /opt/torch /repo /home/rsi/.cache \
    && chown rsi:rsi /opt/venv /opt/torch /repo /home/rsi/.cache
# The entry point gives an unknown uid (`docker run --user "$(id -u):$(id -g)"`) a writable HOME and
# caches, then runs the command; see scripts/entrypoint.sh.
COPY scripts/entrypoint.sh /usr/local/bin/rsi-entrypoint
ENTRYPOINT ["/usr/local/bin/rsi-entrypoint"]
# numeric, so the host resolves it too (the user rsi above)
USER 1000:1000
WORKDIR /repo

# The repository as a fresh clone has it (.dockerignore drops .git, venvs, outputs and caches).
COPY --chown=1000:1000 . .

# Install exactly requirements.lock, then the package: the script .ci/run and the README run. pip keeps
# its cache in a build cache mount, so a rebuild after a code change downloads no wheel again, and the
# cache never enters the image.
RUN --mount=type=cache,target=/home/rsi/.cache/pip,uid=1000,gid=1000 \
    bash scripts/install.sh --keep-pip-cache

# No .git in the image (see .dockerignore): without a mount the container runs the pipeline on the code
# it was built from. Without git metadata DVC refuses to work unless told so; core.no_scm goes into
# .dvc/config.local (untracked), so the repository's own .dvc/config is unchanged. A host clone mounted
# over /repo brings its own .git and .dvc/config (no core.no_scm): there `dvc exp run`, `dvc exp show`,
# `dvc metrics diff` and `dvc plots diff` work on its history, with the git installed above.
RUN dvc config --local core.no_scm true

# The image: the environment plus the paper's weights.
FROM environment

# resnet18-f37072fd.pth at build time, SHA-256 prefix f37072fd checked by `rsi fetch-weights`: into
# torchvision's cache (model.weights: torchvision) and into data/ (model.weights: data/resnet18-...).
RUN rsi fetch-weights --out "$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth" \
    && rsi fetch-weights

CMD ["dvc", "repro"]
