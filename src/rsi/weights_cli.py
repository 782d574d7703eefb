"""`rsi fetch-weights [--arch resnet34]`: put torchvision's IMAGENET1K_V1 file of an arch (default: the
params file's model.arch) into data/ (or a given path) and check its content hash."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from rsi.config import load_section, read_params
from rsi.model import (
    CHECKPOINTS,
    FETCHED_DIR,
    WeightsError,
    check_weights_file,
    checkpoint,
    torchvision_cache_path,
)
from rsi.runtime import ModelParams
from rsi.taps import DEFAULT_ARCH


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        choices=list(CHECKPOINTS),
        default=None,
        help="which network's weights (default: model.arch of --params if that file exists, else resnet18)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="where to put the weights (default: data/<file name>, where model.weights: torchvision finds it)",
    )


def _arch(args: argparse.Namespace) -> str:
    if args.arch:
        return args.arch
    params = Path(getattr(args, "params", "params.yaml"))
    if not params.is_file():
        return DEFAULT_ARCH
    return load_section(read_params(params), "model", ModelParams, source=str(params)).arch


def run(args: argparse.Namespace) -> None:
    known = checkpoint(_arch(args))
    out = Path(args.out) if args.out else FETCHED_DIR / known.file
    if out.is_file():
        check_weights_file(out, known.arch)
        print(f"{out}: present, SHA-256 {known.sha256[:8]}… checked ({known.arch} IMAGENET1K_V1)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cached = torchvision_cache_path(known.arch)
    if cached.is_file():
        check_weights_file(cached, known.arch)
        shutil.copyfile(cached, out)
        print(f"{out}: copied from torchvision's cache {cached}")
        return
    try:
        torch.hub.download_url_to_file(known.url, str(out), hash_prefix=known.sha256)
    except Exception as error:
        raise WeightsError(
            f"could not download {known.url} ({error}); copy {known.file} to {out} by hand"
        ) from error
    check_weights_file(out, known.arch)
    print(f"{out}: downloaded and checked")
