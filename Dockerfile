# syntax=docker/dockerfile:1
# rsi: the whole pipeline in a CUDA container.
#
#   docker build -t rsi .
#   docker run --gpus all -v "$IMAGENET":/data/imagenet:ro rsi            # = dvc repro
#   docker run --gpus all -v "$IMAGENET":/data/imagenet:ro -v "$PWD/outputs":/repo/outputs rsi
#
# Base: torch 2.14.1 in requirements.lock is a CUDA 13.0 build whose CUDA libraries (cuBLAS, cuDNN, NCCL
# ...) come as pip wheels, so the image only needs a CUDA 13.0 runtime userland and the host's driver
# (>= 580, injected by the NVIDIA container toolkit). Pinned to an exact tag, never `latest`.
FROM nvidia/cuda:13.0.2-runtime-ubuntu22.04

# Python 3.11 from Ubuntu 22.04's own archive (pyproject.toml requires >=3.11,<3.12); ca-certificates
# for the HTTPS download of the weights. Every Python package comes from requirements.lock below.
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# DL3008 (pin apt versions) is ignored on purpose: the archive drops superseded versions of these
# packages, so exact pins break the build within months; the tag above fixes the Ubuntu release and
# requirements.lock fixes every Python package.

# The venv lives outside the repo (scripts/install.sh honours RSI_VENV); its bin/ first on PATH puts
# `rsi` and `dvc` there. TORCH_HOME: torchvision's weights cache, readable by the non-root user.
ENV RSI_VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

# Run as an ordinary user: everything it writes (venv, weights, repo, DVC cache) is its own.
RUN useradd --create-home --uid 1000 --shell /bin/bash rsi \
    && mkdir -p /opt/venv /opt/torch /repo \
    && chown rsi:rsi /opt/venv /opt/torch /repo
# numeric, so the host resolves it too (the user rsi above)
USER 1000:1000
WORKDIR /repo

# The repository as a fresh clone has it (.dockerignore drops .git, venvs, outputs and caches).
COPY --chown=1000:1000 . .

# Install exactly requirements.lock, then the package: the same command .ci/run and the README run.
# The pip cache is a build cache mount, so it speeds rebuilds without entering the image.
RUN --mount=type=cache,target=/home/rsi/.cache/pip,uid=1000,gid=1000 \
    bash scripts/install.sh

# resnet18-f37072fd.pth at build time, SHA-256 prefix f37072fd checked by `rsi fetch-weights`: into
# torchvision's cache (model.weights: torchvision) and into data/ (model.weights: data/resnet18-...).
RUN rsi fetch-weights --out "$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth" \
    && rsi fetch-weights

# No .git in the image (see .dockerignore): the container runs the pipeline on the code it was built
# from, and history stays on the host where `dvc metrics diff` / `dvc exp` compare commits. Without git
# metadata DVC refuses to work unless told so; core.no_scm goes into .dvc/config.local (untracked), so the
# repository's own .dvc/config is unchanged. Keeping .git instead would ship the whole history and make
# git reject the checkout under another uid ("dubious ownership").
RUN dvc config --local core.no_scm true

CMD ["dvc", "repro"]
