"""`rsi prepare-data`: the evaluation images, decoded once into a 256 px uint8 cache (``outputs/eval``).

Owns the image listing (``data.source``: folders, flat, generated), subsets, the pinned download and the
decode; the cache's files are written and read through :mod:`rsi.artifacts.eval` (later stages open it with
:func:`rsi.eval_set.load_eval`, which adds their batching). Sources, bad files, the crop rule and the
download: see docs/data.md. index.json records the JPEG decoder (``decoder``): libjpeg-turbo and IJG
libjpeg 7+ upsample chroma differently (the authors decoded with IJG 9e), so the cached pixels, and the
accuracies compared "to the image", are only exact for the same decoder.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.resources
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL
from PIL import Image, features
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from tqdm import tqdm

from rsi import artifacts, distributed
from rsi.artifacts.data_listing import DataListing, data_listing_file, read_data_listing
from rsi.artifacts.eval import DataMetrics, read_eval, write_data_metrics, write_eval
from rsi.config import DVC_STAGE, ParamsError, load_section, load_seed, read_params
from rsi.runtime import atomic_path, key_seed, write_json

CACHE_SIZE = 256

IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"
IMAGENETTE_SHA256 = "569b4497c98db6dd29f335d1f109cf315fe127053cedf69010d047f0188e158c"
# Imagenette's wnids and their ImageNet-1k class indices (sorted-wnid order of the 1000 classes).
IMAGENETTE_CLASSES: dict[str, int] = {
    "n01440764": 0,  # tench
    "n02102040": 217,  # English springer
    "n02979186": 482,  # cassette player
    "n03000684": 491,  # chain saw
    "n03028079": 497,  # church
    "n03394916": 566,  # French horn
    "n03417042": 569,  # garbage truck
    "n03425413": 571,  # gas pump
    "n03445777": 574,  # golf ball
    "n03888257": 701,  # parachute
}


IMAGENET_CLASSES = 1000


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted: n01440764 is 0, n15075141 is 999), from the
    package's ``imagenet_wnids.txt`` (the same list as timm's imagenet_synsets.txt and the devkit's
    LOC_synset_mapping.txt)."""
    text = importlib.resources.files("rsi").joinpath("imagenet_wnids.txt").read_text()
    return tuple(text.split())


def imagenet_index() -> dict[str, int]:
    """wnid → ImageNet-1k class index."""
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


class DataError(ValueError):
    """Bad evaluation data: the message names the file and what to do."""


# how to point data.root at the images, in every missing-root error
_ROOT_FIX = (
    "mount ImageNet's validation set there (docker run -v $IMAGENET:/data/imagenet, README 'Data and "
    "weights') or set data.root to where it is"
)


# ----------------------------------------------------------------------------------------------- params


@dataclass(frozen=True)
class GeneratedParams:
    """``data.generated``: size of the synthetic offline set."""

    classes: int = field(default=10, metadata={"min": 1, "max": 1000})
    per_class: int = field(default=8, metadata={"min": 1})
    size: int = field(default=288, metadata={"min": 8, "help": "short side of the generated images (px)"})


def _check_sha(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
        raise ValueError("expected 64 hex digits (a SHA-256)")
    return value.lower()


@dataclass(frozen=True)
class DownloadParams:
    """``data.download``: a pinned archive fetched when ``root`` is missing."""

    url: str = IMAGENETTE_URL
    sha256: str = field(default=IMAGENETTE_SHA256, metadata={"check": _check_sha})
    into: str = "data"


@dataclass(frozen=True)
class DataParams:
    """params.yaml ``data``."""

    source: Literal["folders", "flat", "generated"] = "folders"
    root: str = "data/imagenet/val"
    ground_truth: str | None = None
    label_map: str | None = None
    class_index: str | None = None
    per_class: int | None = field(default=None, metadata={"min": 1})
    random_subset: int | None = field(default=None, metadata={"min": 1})
    on_bad_file: Literal["error", "skip"] = "error"
    workers: int = field(default=0, metadata={"min": 0})
    generated: GeneratedParams = field(default_factory=GeneratedParams)
    download: DownloadParams | None = None


# ----------------------------------------------------------------------------------------------- listing


@dataclass
class Listing:
    """What to decode: files (or generated ids) with their class indices, in evaluation order."""

    items: list[str]
    labels: list[int]
    classes: dict[str, int]
    root: str = ""
    ignored: list[str] = field(default_factory=list)


def read_class_index(spec: str | None) -> dict[str, int] | None:
    """wnid → class index from ``data.class_index`` (None: the ImageNet-1k index, applied when listing).

    A file holds ``<wnid> <index>`` lines, or ``<wnid>`` / ``<wnid> <words>`` lines whose line number (from
    0, blank lines skipped) is the index; not both, since a file mixing them most likely lost a column. A
    second field that starts like a number (a digit, or a sign and a digit) is an index and must be a whole
    number: ``5x`` or ``-3`` is a typo, not words. Two wnids with one index would merge two classes."""
    if spec is None:
        return None
    if spec == "imagenette":
        return dict(IMAGENETTE_CLASSES)
    path = Path(spec)
    if not path.is_file():
        raise DataError(
            f"data.class_index = {spec!r}: no such file (give 'imagenette', a wnid list file, or null)"
        )
    mapping: dict[str, int] = {}
    line_of: dict[str, int] = {}
    wnid_of: dict[int, str] = {}
    styles: dict[bool, int] = {}  # explicit index or not → the first line of that style
    for number, (line, text) in enumerate(_numbered_lines(path)):
        wnid, *rest_list = text.split(maxsplit=1)
        rest = rest_list[0] if rest_list else ""
        explicit = re.match(r"[+-]?[0-9]", rest) is not None
        if explicit and re.fullmatch(r"[0-9]+", rest) is None:
            raise DataError(
                f"{path}: line {line}: class index {rest!r} of {wnid} is not a whole number >= 0; write "
                "'<wnid> <index>' with the index in 0..999, or '<wnid>' alone to use the line number"
            )
        styles.setdefault(explicit, line)
        if len(styles) == 2:
            raise DataError(
                f"{path}: line {styles[True]} gives a class index but line {styles[False]} does not; give "
                "every line an index ('<wnid> <index>') or none (the line number is the index)"
            )
        index = int(rest) if explicit else number
        if wnid in mapping:
            raise DataError(
                f"{path}: wnid {wnid} is listed twice (lines {line_of[wnid]} and {line}); list it once"
            )
        if not 0 <= index < IMAGENET_CLASSES:
            raise DataError(
                f"{path}: line {line}: {wnid} has class index {index}, outside the model's "
                f"0..{IMAGENET_CLASSES - 1}"
            )
        if index in wnid_of:
            other = wnid_of[index]
            raise DataError(
                f"{path}: {other} (line {line_of[other]}) and {wnid} (line {line}) both have class index "
                f"{index}, which would merge two classes; give each wnid its own index"
            )
        mapping[wnid], line_of[wnid], wnid_of[index] = index, line, wnid
    if not mapping:
        raise DataError(f"{path}: no wnids in the class index file")
    return mapping


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines: errors name the line as an editor shows it."""
    lines = enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1)  # a BOM is no text
    return [(number, line.strip()) for number, line in lines if line.strip()]


def _class_to_idx(wnids: Sequence[str], class_index: dict[str, int] | None, where: str) -> dict[str, int]:
    ordered = sorted(set(wnids))
    if class_index is None:
        known = imagenet_index()
        unknown = [w for w in ordered if w not in known]
        if unknown:
            raise DataError(
                f"{where}: class {unknown[0]!r} is not an ImageNet-1k wnid ({len(unknown)} of {len(ordered)} "
                "unknown; ImageNet-1k classes are n01440764 ... n15075141); rename it, or map the names with "
                "data.class_index (a file of '<name> <ImageNet index>' lines)"
            )
        return {wnid: known[wnid] for wnid in ordered}
    missing = [w for w in ordered if w not in class_index]
    if missing:
        raise DataError(
            f"{where}: class {missing[0]} is not in data.class_index ({len(missing)} missing); "
            "give a class index file that lists every class, or class_index: null for ImageNet-1k wnids"
        )
    return {wnid: class_index[wnid] for wnid in ordered}


def list_folders(root: str | Path, class_index: dict[str, int] | None = None) -> Listing:
    """ImageFolder's files and order under ``root/<class>/``; class indices as documented above."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data.root = {str(root)!r}: no such folder (class folders <root>/<wnid>/*.JPEG): {_ROOT_FIX}"
        )
    wnids = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not wnids:
        raise DataError(f"{root}: no class folders (expected <root>/<wnid>/*.JPEG)")
    class_to_idx = _class_to_idx(wnids, class_index, str(root))
    items: list[str] = []
    labels: list[int] = []
    ignored: list[str] = []
    empty: list[str] = []
    for wnid in wnids:
        count = 0
        for folder, _, names in sorted(os.walk(root / wnid, followlinks=True)):
            for name in sorted(names):
                relative = os.path.relpath(os.path.join(folder, name), root)
                if has_file_allowed_extension(name, IMG_EXTENSIONS):
                    items.append(relative)
                    labels.append(class_to_idx[wnid])
                    count += 1
                else:
                    ignored.append(relative)
        if not count:
            empty.append(wnid)
    if empty:
        raise DataError(
            f"{root}: no image files ({', '.join(IMG_EXTENSIONS)}) in class folder(s) {', '.join(empty)}"
        )
    return Listing(items, labels, class_to_idx, str(root), ignored)


def read_label_map(path: str | Path) -> dict[int, str]:
    """Integer label → wnid: ``<label> <wnid>`` lines, or the ImageNet devkit's ``meta.mat`` (its leaf
    synsets). One to one: a repeated label would overwrite a wnid, a repeated wnid merge two labels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.label_map = {str(path)!r}: no such file")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        ids = np.atleast_1d(synsets["ILSVRC2012_ID"])
        wnids = np.atleast_1d(synsets["WNID"])
        children = np.atleast_1d(synsets["num_children"])
        rows = zip(ids, wnids, children, strict=True)
        entries = [
            (f"synsets row {row}", int(i), str(w)) for row, (i, w, n) in enumerate(rows) if int(n) == 0
        ]
        return _one_to_one(path, entries)
    entries = []
    for line, text in _numbered_lines(path):
        parts = text.split()
        if len(parts) < 2 or re.fullmatch(r"-?[0-9]+", parts[0]) is None:
            raise DataError(f"{path}: line {line}: {text!r} is not '<integer label> <wnid>'")
        entries.append((f"line {line}", int(parts[0]), parts[1]))
    return _one_to_one(path, entries)


def _one_to_one(path: Path, entries: list[tuple[str, int, str]]) -> dict[int, str]:
    """label → wnid from (where, label, wnid) entries; a label or a wnid given twice is a DataError."""
    mapping: dict[int, str] = {}
    where_label: dict[int, str] = {}
    label_of: dict[str, int] = {}
    for where, label, wnid in entries:
        if label in mapping:
            raise DataError(
                f"{path}: label {label} is given twice, to {mapping[label]} ({where_label[label]}) and {wnid} "
                f"({where}); give each label one wnid"
            )
        if wnid in label_of:
            other = label_of[wnid]
            raise DataError(
                f"{path}: labels {other} ({where_label[other]}) and {label} ({where}) both name {wnid}, which "
                "would merge two classes; give each label its own wnid"
            )
        mapping[label], where_label[label], label_of[wnid] = wnid, where, label
    return mapping


def list_flat(
    root: str | Path,
    ground_truth: str | Path,
    label_map: str | Path | None = None,
    class_index: dict[str, int] | None = None,
) -> Listing:
    """The official flat validation folder with its ground-truth file (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data.root = {str(root)!r}: no such folder (the flat validation folder): {_ROOT_FIX}"
        )
    gt_path = Path(ground_truth)
    if not gt_path.is_file():
        raise DataError(f"data.ground_truth = {str(gt_path)!r}: no such file (one label per line)")
    # a broken symlink stays listed, so that decoding names it (as in the folders layout)
    names = sorted(entry.name for entry in os.scandir(root) if entry.is_file() or entry.is_symlink())
    images = [n for n in names if has_file_allowed_extension(n, IMG_EXTENSIONS)]
    ignored = [n for n in names if n not in set(images)]
    numbered = _numbered_lines(gt_path)
    lines = [text.split() for _, text in numbered]
    if lines and all(len(parts) >= 2 for parts in lines):
        by_name: dict[str, str] = {}
        for (number, _), (name, label, *_) in zip(numbered, lines, strict=True):
            if name in by_name and by_name[name] != label:
                raise DataError(
                    f"{gt_path}: line {number} labels {name} {label}, an earlier line {by_name[name]}: keep one"
                )
            by_name[name] = label
        unknown = [n for n in images if n not in by_name]
        if unknown:
            raise DataError(f"{gt_path}: no label for {root / unknown[0]} ({len(unknown)} files unlabelled)")
        absent = sorted(set(by_name) - set(names))
        if absent:  # a partial copy is evaluated as it is, but not silently
            print(
                f"prepare-data: {len(absent)} file(s) that {gt_path} labels are not in {root} "
                f"(first: {absent[0]}); evaluating the {len(images)} that are"
            )
        raw = [by_name[n] for n in images]
    else:
        if len(lines) != len(images):
            raise DataError(
                f"{gt_path} has {len(lines)} labels but {root} has {len(images)} image files; the i-th "
                "line labels the i-th file in sorted order (or write '<file name> <label>' lines)"
            )
        raw = [parts[0] for parts in lines]
    mapping = read_label_map(label_map) if label_map is not None else None
    if all(token.lstrip("-").isdigit() for token in raw):
        numbers = [int(token) for token in raw]
        if mapping is None:
            outside = [(i, n) for i, n in enumerate(numbers) if not 0 <= n < IMAGENET_CLASSES]
            if outside:
                line, label = outside[0]
                raise DataError(
                    f"{gt_path}: label {label} (for {images[line]}) is outside the ImageNet-1k class indices "
                    f"0..{IMAGENET_CLASSES - 1} ({len(outside)} such labels); the devkit's 1-based "
                    "ILSVRC2012_IDs need data.label_map (its meta.mat)"
                )
            return _imagefolder_order(
                images, [imagenet_wnids()[n] for n in numbers], numbers, {}, root, ignored
            )
        unknown_ids = sorted({n for n in numbers if n not in mapping})
        if unknown_ids:
            raise DataError(f"{gt_path}: label {unknown_ids[0]} is not in the label map {label_map}")
        wnids = [mapping[n] for n in numbers]
        class_to_idx = _class_to_idx(list(mapping.values()), class_index, str(label_map))
    else:
        wnids = raw
        class_to_idx = _class_to_idx(wnids, class_index, str(gt_path))
    return _imagefolder_order(images, wnids, [class_to_idx[w] for w in wnids], class_to_idx, root, ignored)


def _imagefolder_order(
    images: list[str],
    wnids: list[str],
    labels: list[int],
    classes: dict[str, int],
    root: Path,
    ignored: list[str],
) -> Listing:
    """The flat folder listed in the order ImageFolder lists the same files sorted into wnid folders (the
    devkit's valprep layout the authors read): by wnid, then by file name. Indices into the evaluation set
    (top-k images, ties, ``random_subset``) then mean the same image in both layouts."""
    order = sorted(range(len(images)), key=lambda i: (wnids[i], images[i]))
    return Listing([images[i] for i in order], [labels[i] for i in order], classes, str(root), ignored)


def select_subset(
    listing: Listing, per_class: int | None = None, random_subset: int | None = None, seed: int = 0
) -> Listing:
    """First ``per_class`` items of every class, then a seeded random ``random_subset`` of those."""
    keep = list(range(len(listing.items)))
    if per_class is not None:
        seen: dict[int, int] = {}
        kept = []
        for i in keep:
            label = listing.labels[i]
            if seen.get(label, 0) < per_class:
                kept.append(i)
                seen[label] = seen.get(label, 0) + 1
        keep = kept
    if random_subset is not None and random_subset < len(keep):
        generator = np.random.default_rng(key_seed(seed, "data", "random_subset"))
        chosen = np.sort(generator.choice(len(keep), size=random_subset, replace=False))
        keep = [keep[i] for i in chosen]
    return Listing(
        [listing.items[i] for i in keep],
        [listing.labels[i] for i in keep],
        listing.classes,
        listing.root,
        listing.ignored,
    )


# ----------------------------------------------------------------------------------------------- decoding


GENERATED_DECODER = "none (generated in memory)"


def describe_decoder(pillow: str, jpeg: str | None, turbo: str | None, mozjpeg: bool = False) -> str:
    """The decoder as index.json records it: Pillow's version, and its JPEG library (``jpeg``: the
    libjpeg API version Pillow reports; ``turbo``: libjpeg-turbo's own version, None for IJG libjpeg)."""
    if jpeg is None:
        return f"Pillow {pillow}, no JPEG support"
    if turbo is None:
        return f"Pillow {pillow}, libjpeg {jpeg}"
    return f"Pillow {pillow}, {'mozjpeg' if mozjpeg else 'libjpeg-turbo'} {turbo} (libjpeg {jpeg} API)"


def jpeg_decoder() -> str:
    """:func:`describe_decoder` of this process's Pillow (e.g. "Pillow 13.0.0, libjpeg-turbo 3.2.0 (libjpeg
    6.2 API)"); older Pillows lack the libjpeg_turbo and mozjpeg features, hence the membership checks."""

    def present(name: str) -> bool:
        return name in features.features and bool(features.check_feature(name))

    turbo = (features.version("libjpeg_turbo") or "(version unknown)") if present("libjpeg_turbo") else None
    return describe_decoder(PIL.__version__, features.version("jpg"), turbo, present("mozjpeg"))


def cache_entry(image: Image.Image, size: int = CACHE_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB, short side ``size`` (torchvision's bilinear antialiased Resize), center crop: (size, size, 3);
    and the (height, width) after the resize, where the later stages' direct center crops are placed."""
    image = image.convert("RGB")
    image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    resized = (image.height, image.width)
    image = TF.center_crop(image, [size, size])
    return np.array(image, dtype=np.uint8), resized


def decode_file(path: str | Path, size: int = CACHE_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file into the cache format (:func:`cache_entry`); any failure is a DataError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return cache_entry(image, size)
    except DataError:
        raise
    except Exception as error:  # PIL raises many types: UnidentifiedImageError, OSError, SyntaxError...
        raise DataError(f"{path}: cannot decode as an image ({type(error).__name__}: {error})") from error


def generated_image(label: int, number: int, seed: int, params: GeneratedParams) -> Image.Image:
    """A deterministic synthetic image of class ``label`` (oriented colour grating + blob + noise)."""
    rng = np.random.default_rng(key_seed(seed, "data", "generated", label, number))
    height, width = params.size, params.size * 5 // 4
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y / height, x / height
    angle = np.pi * label / params.classes
    frequency = 3.0 + 5.0 * ((label * 7919) % params.classes) / max(params.classes, 1)
    phase = rng.uniform(0, 2 * np.pi)
    grating = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    tint = np.array([np.cos(angle), np.cos(angle + 2.1), np.cos(angle + 4.2)]) * 0.35
    cy, cx, radius = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9), rng.uniform(0.08, 0.2)
    blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
    image = 0.5 + 0.25 * grating[..., None] + tint * (0.5 + 0.5 * grating[..., None])
    image = image + 0.3 * blob[..., None] * rng.uniform(-1, 1, size=3)
    image = image + rng.normal(0, 0.03, size=image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), mode="RGB")


def list_generated(params: GeneratedParams) -> Listing:
    items, labels = [], []
    for label in range(params.classes):
        for number in range(params.per_class):
            items.append(f"generated/{label:03d}/{number:04d}")
            labels.append(label)
    classes = {f"generated_{label:03d}": label for label in range(params.classes)}
    return Listing(items, labels, classes, "generated")


class _DecodeSet(Dataset):
    """Decodes listing item i; a failure is returned (not raised) so the main process decides."""

    def __init__(
        self, listing: Listing, source: str, seed: int, generated: GeneratedParams, size: int = CACHE_SIZE
    ) -> None:
        self.listing, self.source, self.seed, self.generated = listing, source, seed, generated
        self.size = size

    def __len__(self) -> int:
        return len(self.listing.items)

    def __getitem__(self, i: int) -> tuple[int, tuple[np.ndarray, tuple[int, int]] | None, str]:
        if self.source == "generated":
            _, label, number = self.listing.items[i].split("/")
            image = generated_image(int(label), int(number), self.seed, self.generated)
            return i, cache_entry(image, self.size), ""
        path = Path(self.listing.root) / self.listing.items[i]
        try:
            return i, decode_file(path, self.size), ""
        except DataError as error:
            return i, None, str(error)


def _keep_items(batch: list) -> list:
    return batch


def decode_to_cache(
    listing: Listing,
    out_dir: str | Path,
    *,
    source: str = "folders",
    on_bad_file: str = "error",
    workers: int = 0,
    seed: int = 0,
    generated: GeneratedParams | None = None,
    size: int = CACHE_SIZE,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode every listed image once into ``out_dir``/{images.npy, labels.npy, index.json}; returns the
    index (also written). Bad files raise a DataError naming them, or are skipped with ``on_bad_file='skip'``.
    ``size`` is the cache side: 256 in the pipeline (tests use smaller caches to run fast).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = generated or GeneratedParams()
    total = len(listing.items)
    if total == 0:
        raise DataError(f"{listing.root}: no images to decode")
    if size % 8:
        raise ValueError(f"cache size {size} must be a multiple of 8 (the no-scale view is 7/8 of it)")
    dataset = _DecodeSet(listing, source, seed, generated, size)
    loader = DataLoader(
        dataset, batch_size=8, shuffle=False, num_workers=workers, collate_fn=_keep_items, drop_last=False
    )
    kept: list[int] = []
    resized: list[tuple[int, int]] = []
    skipped: list[dict[str, str]] = []
    handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=".images.npy.", suffix=".tmp")
    os.close(handle)
    try:
        cache = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(total, size, size, 3))
        bar = tqdm(total=total, desc="prepare-data: decode", unit="img", disable=not progress)
        for batch in loader:
            for i, entry, error in batch:
                if entry is None:
                    if on_bad_file == "skip":
                        warnings.warn(f"skipping {error}", stacklevel=2)
                    skipped.append({"file": listing.items[i], "error": error})
                else:
                    cache[len(kept)], shape = entry
                    kept.append(i)
                    resized.append(shape)
            bar.update(len(batch))
        bar.close()
        cache.flush()
        del cache
        if skipped and (on_bad_file != "skip" or not kept):  # nothing left: no cache to evaluate on
            raise _bad_files_error(skipped)
        if skipped:
            _compact(Path(temporary), len(kept))
        index = _index(listing, kept, skipped, source, size)
        labels = np.asarray([listing.labels[i] for i in kept], dtype=np.int64)
        shapes = np.asarray(resized, dtype=np.int32).reshape(len(kept), 2)
        write_eval(out_dir, Path(temporary), labels, shapes, index)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return index


def _index(
    listing: Listing, kept: list[int], skipped: list[dict[str, str]], source: str, size: int
) -> dict[str, Any]:
    """index.json of the cache (the keys of rsi.artifacts.eval.INDEX_KEYS)."""
    return {
        "source": source,
        "generated": source == "generated",
        "decoder": GENERATED_DECODER if source == "generated" else jpeg_decoder(),
        "root": listing.root,
        "count": len(kept),
        "size": size,
        "classes": listing.classes,
        "files": [listing.items[i] for i in kept],
        "skipped_count": len(skipped),
        "skipped": skipped,
        "ignored_count": len(listing.ignored),
        "ignored": listing.ignored,
    }


def _bad_files_error(bad: list[dict[str, str]], shown: int = 20) -> DataError:
    """One line naming every bad file (the first ``shown`` of them and a count): fixing them one per run
    would cost a whole decode pass each."""
    listed = "; ".join(entry["error"] for entry in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    return DataError(
        f"{len(bad)} file(s) cannot be decoded: {listed}{more}. Fix or remove them, or set "
        "data.on_bad_file: skip to leave such files out (they are then counted in index.json and "
        "metrics/data.json)"
    )


def _compact(path: Path, rows: int) -> None:
    """Shrink a cache .npy to its first ``rows`` rows (only after skipped files), in place via a copy."""
    source = np.load(path, mmap_mode="r")
    target_path = path.with_name(path.name + ".compact")
    target = np.lib.format.open_memmap(
        target_path, mode="w+", dtype=np.uint8, shape=(rows, *source.shape[1:])
    )
    for start in range(0, rows, 256):
        stop = min(start + 256, rows)
        target[start:stop] = source[start:stop]
    target.flush()
    del target, source
    os.replace(target_path, path)


# ----------------------------------------------------------------------------------------------- download


def download_archive(url: str, sha256: str, dest: str | Path, *, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` (a file path, or a folder to put the URL's file name in) and check its
    SHA-256; an existing file with the right hash is kept. The file appears only once checked."""
    dest = Path(dest)
    if dest.is_dir() or str(dest).endswith(os.sep):
        dest = dest / Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).name
    expected = _check_sha(sha256)
    if dest.is_file() and _sha256_file(dest) == expected:
        return dest
    digest = hashlib.sha256()
    with atomic_path(dest) as temporary:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(temporary, "wb") as handle:
                length = response.headers.get("Content-Length")
                bar = tqdm(
                    total=int(length) if length else None,
                    unit="B",
                    unit_scale=True,
                    desc=f"download {dest.name}",
                    disable=not progress,
                )
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                bar.close()
        except OSError as error:
            raise DataError(
                f"could not download {url} ({error}); fetch it by hand into {dest} (SHA-256 {expected})"
            ) from error
        actual = digest.hexdigest()
        if actual != expected:
            raise DataError(
                f"{url} downloaded with SHA-256 {actual}, expected {expected}: the download is corrupt or "
                "the archive changed; nothing was kept. Retry, or pin the new hash in data.download.sha256 "
                "after checking it"
            )
    return dest


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _unsafe_member(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in Path(name).parts


def archive_members(archive: str | Path) -> list[tuple[str, int | None]]:
    """(name, size) of every file and folder (size None) in a .tar(.gz/.tgz) or .zip; an absolute or
    escaping name is a DataError naming the archive and the member."""
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            entries = [(i.filename, None if i.is_dir() else i.file_size) for i in handle.infolist()]
    else:
        with tarfile.open(archive) as handle:
            entries = [(m.name, None if m.isdir() else m.size) for m in handle.getmembers()]
    for name, _ in entries:
        if _unsafe_member(name):
            raise DataError(
                f"{archive}: refusing to extract {name!r}: an absolute path or one outside its folder"
            )
    return entries


def _top_level(entries: list[tuple[str, int | None]]) -> list[str]:
    return sorted({Path(name).parts[0] for name, _ in entries if Path(name).parts})


def _unpack_into(archive: Path, folder: Path) -> None:
    """Every member of ``archive`` under ``folder``; in a tar, links and device files are refused too."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(folder)
        return
    with tarfile.open(archive) as handle:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: tar's own "data" filter
            try:
                handle.extractall(folder, filter="data")
            except tarfile.FilterError as error:
                raise DataError(f"{archive}: refusing to extract: {error}") from error
        else:  # 3.11.0 - 3.11.3 (the Docker image's 3.11.2): the same refusals, checked first
            for member in handle.getmembers():
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive}: refusing to extract a link or special file {member.name!r}")
            handle.extractall(folder)


def unpacked_marker(archive: str | Path, into: str | Path) -> Path:
    """The file in ``into`` that records a complete unpacking of ``archive`` there (its SHA-256 and
    top-level entries)."""
    return Path(into) / f"{Path(archive).name}.unpacked.json"


def extract_archive(archive: str | Path, into: str | Path, *, sha256: str | None = None) -> Path:
    """Unpack a .tar(.gz/.tgz) or .zip under ``into``, refusing absolute and escaping paths (and, in a
    tar, links and device files): a DataError naming the archive and the member. Members go to a
    temporary folder inside ``into`` first and are renamed into place only when every one passed, then
    :func:`unpacked_marker` records the archive's SHA-256: a refused or interrupted unpacking leaves
    nothing that a rerun could mistake for the data."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    entries = _top_level(archive_members(archive))
    temporary = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".partial", dir=into))
    try:
        _unpack_into(archive, temporary)
        present = [name for name in entries if os.path.lexists(into / name)]
        if present:
            raise DataError(
                f"{archive}: {into / present[0]} exists already, but not from a complete unpacking of this "
                f"archive (no {unpacked_marker(archive, into).name}): delete it and rerun to unpack again"
            )
        for name in entries:
            os.rename(temporary / name, into / name)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    write_json(
        unpacked_marker(archive, into), {"sha256": sha256 or _sha256_file(archive), "entries": entries}
    )
    return into


def _unpacked_difference(archive: Path, into: Path) -> str | None:
    """The first member of ``archive`` that ``into`` lacks or holds with another size; None if none."""
    for name, size in archive_members(archive):
        path = into / name
        if not (path.is_dir() if size is None else path.is_file()):
            return f"{name} is missing"
        if size is not None and path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the archive {size}"
    return None


def ensure_download(params: DownloadParams, root: str | Path, *, progress: bool = True) -> None:
    """``root`` from the pinned archive: downloaded and unpacked when missing. A present ``root`` inside
    the archive's folders must come from a complete unpacking of this archive (its marker); without the
    marker it is re-checked member by member against the archive (sizes), and refused if it differs."""
    root, into = Path(root), Path(params.into)
    if not os.path.lexists(root):
        fetch_download(params, progress=progress)
        return
    archive = into / Path(urllib.request.url2pathname(params.url.rsplit("/", 1)[-1])).name
    marker = unpacked_marker(archive, into)
    if marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("sha256") == params.sha256 and _inside(root, into, record.get("entries", [])):
            return
    archive = download_archive(params.url, params.sha256, archive, progress=progress)
    entries = _top_level(archive_members(archive))
    if not _inside(root, into, entries):
        return  # root is not the archive's: nothing to check
    difference = _unpacked_difference(archive, into)
    if difference is not None:
        raise DataError(
            f"data.root = {str(root)!r} is not a complete unpacking of {archive} ({difference}), e.g. left "
            f"by an interrupted or refused unpacking: delete {into / entries[0]} and rerun to unpack it "
            "again, or set data.download: null to use the folder as it is"
        )
    write_json(marker, {"sha256": params.sha256, "entries": entries})


def _inside(root: Path, into: Path, entries: Sequence[str]) -> bool:
    resolved = root.resolve()
    return any(resolved.is_relative_to((into / name).resolve()) for name in entries)


def fetch_download(params: DownloadParams, *, progress: bool = True) -> Path:
    """Download the pinned archive into ``params.into`` (checked) and unpack it there."""
    Path(params.into).mkdir(parents=True, exist_ok=True)
    archive = download_archive(params.url, params.sha256, Path(params.into), progress=progress)
    return extract_archive(archive, params.into, sha256=params.sha256)


# ----------------------------------------------------------------------------------------------- stage


def full_listing(params: DataParams) -> Listing:
    """Every image of the source with its label, before any subset (what rsi.data_listing digests)."""
    class_index = read_class_index(params.class_index)
    if params.source == "generated":
        return list_generated(params.generated)
    if params.source == "folders":
        return list_folders(params.root, class_index)
    if params.ground_truth is None:
        raise ParamsError("data.source = 'flat' needs data.ground_truth (one label per line)")
    return list_flat(params.root, params.ground_truth, params.label_map, class_index)


def listing_digest(params: DataParams, listing: Listing | None = None) -> DataListing:
    """The :class:`~rsi.artifacts.data_listing.DataListing` of :func:`full_listing` (``listing``, when
    the caller made it already): each file's name, label, size and modification time in one SHA-256 (a
    copy of the same images elsewhere has other times and re-runs prepare-data once; an image edited in
    place does too)."""
    if listing is None:
        listing = full_listing(params)
    digest = hashlib.sha256()
    # the class map and the files left out go into index.json and metrics/data.json as well
    digest.update(json.dumps([sorted(listing.classes.items()), sorted(listing.ignored)]).encode() + b"\n")
    for item, label in zip(listing.items, listing.labels, strict=True):
        stat = "-\t-"
        if params.source != "generated":
            try:
                found = os.stat(Path(listing.root) / item)
                stat = f"{found.st_size}\t{found.st_mtime_ns}"
            except OSError:  # a broken link: decoding names it
                pass
        digest.update(f"{item}\t{label}\t{stat}\n".encode())
    return DataListing(
        source=params.source,
        root=str(listing.root),
        files=len(listing.items),
        classes=len(set(listing.labels)),
        digest=digest.hexdigest(),
    )


def check_listing(params: DataParams, outputs: Path, listing: Listing) -> None:
    """Under `dvc repro`: ``listing`` (:func:`full_listing`), which prepare-data is about to decode, is what
    stage data-listing saw (DVC ran this stage because its digest changed); a copy still going on in
    between is an error."""
    path = data_listing_file(outputs)
    recorded = read_data_listing(path)
    now = listing_digest(params, listing)
    if (recorded.source, recorded.root) != (now.source, now.root):
        raise DataError(
            f"{path} lists {recorded.source} data at {recorded.root!r}, the params {now.source} data at "
            f"{now.root!r}: stage data-listing did not run first (dvc repro --single-item?); run "
            "`dvc repro data-listing prepare-data`"
        )
    if recorded != now:
        raise DataError(
            f"the images or labels of data.root = {params.root!r} changed after stage data-listing listed "
            f"them ({path}); wait for any copy to finish and run `dvc repro` again"
        )


def make_listing(params: DataParams, seed: int = 0, full: Listing | None = None) -> Listing:
    """The images to decode: ``full`` (:func:`full_listing`, made here when not given) subset by the params."""
    return select_subset(
        full_listing(params) if full is None else full, params.per_class, params.random_subset, seed
    )


def prepare(
    params: DataParams,
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    metrics: str | Path | None = None,
    progress: bool = True,
    full: Listing | None = None,
) -> dict[str, Any]:
    """The whole stage: (download,) list, subset, decode, write the cache and (optionally) the metrics.
    ``full``: the source's :func:`full_listing`, when the caller listed it already."""
    out_dir = Path(out_dir) if out_dir is not None else artifacts.eval_dir()
    if params.source != "generated" and params.download is not None:
        ensure_download(params.download, params.root, progress=progress)
    listing = make_listing(params, seed, full)
    options = {"source": params.source, "on_bad_file": params.on_bad_file, "workers": params.workers}
    index = decode_to_cache(
        listing, out_dir, **options, seed=seed, generated=params.generated, progress=progress
    )
    if metrics is not None:
        record = DataMetrics(
            images=index["count"],
            skipped=index["skipped_count"],
            ignored=index["ignored_count"],
            classes=len({int(v) for v in read_eval(out_dir).labels}),
            generated=int(index["generated"]),
        )
        write_data_metrics(record, Path(metrics))
    return index


# `--outputs` (added to every stage by rsi.cli): what this stage reads and writes under it
OUTPUTS_HELP = "outputs root: writes the cache to <outputs>/eval (default outputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", default="metrics/data.json", help="image and skipped-file counts")
    parser.add_argument(
        "--download-only",
        action="store_true",
        help="fetch and unpack data.download (pinned URL, SHA-256 checked) and stop",
    )


def run(args: argparse.Namespace) -> None:
    raw = read_params(args.params)
    params = load_section(raw, "data", DataParams, source=args.params)
    if args.download_only:
        if params.download is None:
            raise ParamsError(f"{args.params}: data.download is null; nothing to download")
        ensure_download(params.download, params.root)
        print(f"{params.root}: unpacked from {params.download.url} (SHA-256 checked)")
        return
    if not distributed.is_main():
        return
    full = None
    if os.environ.get(DVC_STAGE):  # stage data-listing's digest is this stage's dependency
        full = full_listing(params)  # listed once: checked against that digest, then decoded
        check_listing(params, Path(args.outputs), full)
    out_dir = artifacts.eval_dir(Path(args.outputs))
    seed = load_seed(raw, source=args.params)
    index = prepare(params, out_dir, seed=seed, metrics=args.metrics, full=full)
    label = " (GENERATED images, not ImageNet)" if index["generated"] else ""
    print(
        f"{out_dir}: {index['count']} images{label}, {index['skipped_count']} skipped, "
        f"{index['ignored_count']} non-image files ignored"
    )


def write_generated_folders(
    dest: str | Path, params: GeneratedParams, seed: int = 0, fmt: str = "JPEG"
) -> Path:
    """The generated set as image files in the ImageFolder layout ``dest/<wnid>/<n>.jpg`` (benchmarks and
    tests of the folder path). Class ``label``'s folder is the ImageNet-1k wnid of index ``label``, so
    :func:`list_folders` gives the same labels as the generated source (the images are not ImageNet's)."""
    dest = Path(dest)
    suffix = ".jpg" if fmt == "JPEG" else f".{fmt.lower()}"
    for label in range(params.classes):
        folder = dest / imagenet_wnids()[label]
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(params.per_class):
            generated_image(label, number, seed, params).save(
                folder / f"{number:04d}{suffix}", fmt, quality=90
            )
    return dest
