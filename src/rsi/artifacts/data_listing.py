"""``outputs/data_listing.json``: what ``rsi prepare-data`` would decode, as a digest, written by
``rsi data-listing`` (a DVC stage that always runs) and read by ``rsi prepare-data``.

DVC tracks ``data.root`` and the label files by their paths only: images added, replaced or removed under
the root, or a corrected ground-truth file, changed nothing DVC looks at, and the pipeline went on with
the old cache. This file is a dependency of prepare-data whose bytes change exactly when the listing
does (file names, labels, sizes, modification times), so `dvc repro` re-decodes then and only then.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rsi.artifacts import OUTPUTS, ArtifactError, load_json, require_keys
from rsi.runtime import write_json

STAGE = "data-listing"


@dataclass(frozen=True)
class DataListing:
    """The listing's source and root, its file and class counts, and a SHA-256 over every listed
    (file, label, size, modification time): equal digests, equal inputs to prepare-data."""

    source: str
    root: str
    files: int
    classes: int
    digest: str


def data_listing_file(root: Path = OUTPUTS) -> Path:
    return Path(root) / "data_listing.json"


def write_data_listing(record: DataListing, path: Path) -> None:
    write_json(path, asdict(record))


def read_data_listing(path: Path) -> DataListing:
    """The record `rsi data-listing` wrote at ``path``."""
    data = load_json(path, STAGE)
    require_keys(path, data, [f for f in DataListing.__dataclass_fields__], STAGE)
    try:
        return DataListing(
            source=str(data["source"]),
            root=str(data["root"]),
            files=int(data["files"]),
            classes=int(data["classes"]),
            digest=str(data["digest"]),
        )
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{path}: {error}; remake it with `rsi {STAGE}`") from error
