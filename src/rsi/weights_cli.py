"""`rsi fetch-weights`: put resnet18-f37072fd.pth into data/ (or a given path) and check its hash."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from rsi.model import (
    WEIGHTS_FILE,
    WEIGHTS_SHA256_PREFIX,
    WEIGHTS_URL,
    WeightsError,
    check_weights_file,
    torchvision_cache_path,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=f"data/{WEIGHTS_FILE}", help="where to put the weights")


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.is_file():
        check_weights_file(out)
        print(f"{out}: present, SHA-256 prefix {WEIGHTS_SHA256_PREFIX} checked")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cached = torchvision_cache_path()
    if cached.is_file():
        check_weights_file(cached)
        shutil.copyfile(cached, out)
        print(f"{out}: copied from torchvision's cache {cached}")
        return
    try:
        torch.hub.download_url_to_file(WEIGHTS_URL, str(out), hash_prefix=WEIGHTS_SHA256_PREFIX)
    except Exception as error:
        raise WeightsError(
            f"could not download {WEIGHTS_URL} ({error}); copy {WEIGHTS_FILE} to {out} by hand"
        ) from error
    check_weights_file(out)
    print(f"{out}: downloaded and checked")
