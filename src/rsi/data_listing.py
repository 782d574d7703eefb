"""`rsi data-listing`: the digest of what `rsi prepare-data` would decode (rsi.artifacts.data_listing).

DVC runs this stage every time (``always_changed``); it only lists and stats files (4 s on a 2-core CPU,
mostly imports and the params check), and prepare-data re-runs only when the digest's bytes change: when
images under ``data.root`` or the labels of the ground-truth, label-map or class-index files changed,
which DVC, tracking those by path, cannot see. A configured ``data.download`` is fetched here, so that
the listing is the same from the first run on. A root that is not there while its last listing is (the
output persists between runs) keeps that listing, with a warning: the images are needed only when
prepare-data has to run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rsi import data
from rsi.artifacts import ArtifactError
from rsi.artifacts.data_listing import data_listing_file, read_data_listing, write_data_listing
from rsi.config import load_section, read_params

OUTPUTS_HELP = "outputs root: writes <outputs>/data_listing.json (default outputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # only --params and --outputs, which rsi.cli adds


def _unmounted(params: data.DataParams, path: Path) -> bool:
    """``data.root`` is not there (an unmounted disk, a temporary experiment folder) while the last
    listing, of this same root, is: its digest stands, so every stage that does not need the images runs
    as before; prepare-data, if something else makes it run, fails naming the root."""
    if params.source == "generated" or Path(params.root).is_dir() or not path.is_file():
        return False
    try:
        recorded = read_data_listing(path)
    except ArtifactError:
        return False
    return (recorded.source, recorded.root) == (params.source, str(Path(params.root)))


def run(args: argparse.Namespace) -> None:
    params = load_section(read_params(args.params), "data", data.DataParams, source=args.params)
    path = data_listing_file(Path(args.outputs))  # kept by DVC between runs (persist: true in dvc.yaml)
    if _unmounted(params, path):
        print(
            f"rsi data-listing: warning: data.root = {params.root!r} is not there; keeping {path} from the "
            "last listing of it, so the evaluation cache stands. Mount it again to check for changed images"
        )
        return
    if params.source != "generated" and params.download is not None:
        data.ensure_download(params.download, params.root)
    record = data.listing_digest(params)
    write_data_listing(record, path)
    print(f"{path}: {record.files} files of {record.classes} classes under {record.root or params.source}")
