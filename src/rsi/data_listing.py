"""`rsi data-listing`: the digest of what `rsi prepare-data` would decode (rsi.artifacts.data_listing).

DVC runs this stage every time (``always_changed``); it only lists and stats files (about a second for
ImageNet's 50,000 on a local disk), and prepare-data re-runs only when the digest's bytes change: when
images under ``data.root`` or the labels of the ground-truth, label-map or class-index files changed,
which DVC, tracking those by path, cannot see. A configured ``data.download`` is fetched here, so that
the listing is the same from the first run on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rsi import data
from rsi.artifacts import OUTPUTS
from rsi.artifacts.data_listing import data_listing_file, write_data_listing
from rsi.config import load_section, read_params

OUTPUTS_HELP = "outputs root: writes <outputs>/data_listing.json (default outputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # only --params and --outputs, which rsi.cli adds


def run(args: argparse.Namespace) -> None:
    params = load_section(read_params(args.params), "data", data.DataParams, source=args.params)
    if params.source != "generated" and params.download is not None:
        data.ensure_download(params.download, params.root)
    record = data.listing_digest(params)
    path = data_listing_file(Path(args.outputs) if args.outputs else OUTPUTS)
    write_data_listing(record, path)
    print(f"{path}: {record.files} files of {record.classes} classes under {record.root or params.source}")
