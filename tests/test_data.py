"""rsi.data: both ImageNet layouts, class maps, bad files, subsets, the decode-once cache and its scale views,
the generated offline set, and the pinned-archive download (file:// and a 127.0.0.1 HTTP server only)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
import zipfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from rsi import cli, data
from rsi.artifacts import ArtifactError, MissingArtifactError
from rsi.artifacts.eval import read_eval
from rsi.config import ParamsError, load_section
from rsi.eval_set import load_eval
from rsi.transforms import IMAGENET_MEAN, IMAGENET_STD, ablation_crop, ablation_view

WNIDS = ("n01440764", "n02102040", "n03888257")  # Imagenette wnids (ImageNet 0, 217, 701)


def make_folders(root: Path, per_class: int = 3, size: int = 40, wnids=WNIDS) -> Path:
    """A tiny ImageFolder layout root/<wnid>/<wnid>_<n>.JPEG of generated images (distinct per file)."""
    params = data.GeneratedParams(classes=len(wnids), per_class=per_class, size=size)
    for label, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            image = data.generated_image(label, n, 0, params)
            image.save(root / wnid / f"{wnid}_{n}.JPEG", "JPEG", quality=92)
    return root


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return data.generated_image(seed % 3, seed, 1, data.GeneratedParams(classes=3, size=40)).resize(
        (width, height), Image.BICUBIC
    )


# ----------------------------------------------------------------------------------------------- layouts


def test_folder_layout_order_and_classes(tmp_path):
    root = make_folders(tmp_path / "val")
    (root / WNIDS[0] / "notes.txt").write_text("not an image")
    listing = data.list_folders(root)
    assert listing.items[:3] == [f"{WNIDS[0]}/{WNIDS[0]}_{n}.JPEG" for n in range(3)]
    # without a class index, each wnid's ImageNet-1k index: a subset of the classes keeps ImageNet's labels
    assert listing.labels == [0, 0, 0, 217, 217, 217, 701, 701, 701]
    assert listing.classes == {WNIDS[0]: 0, WNIDS[1]: 217, WNIDS[2]: 701}
    assert listing.ignored == [f"{WNIDS[0]}/notes.txt"]
    imagenette = data.list_folders(root, data.read_class_index("imagenette"))
    assert sorted(set(imagenette.labels)) == [0, 217, 701]
    # a class index file: "<wnid> <words>" lines in index order (LOC_synset_mapping.txt style)
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n00000001 something\n" + "".join(f"{w} words, more\n" for w in WNIDS))
    assert data.list_folders(root, data.read_class_index(str(synsets))).labels[::3] == [1, 2, 3]
    explicit = tmp_path / "explicit.txt"
    explicit.write_text("".join(f"{w} {i * 10}\n" for i, w in enumerate(WNIDS)))
    assert data.list_folders(root, data.read_class_index(str(explicit))).labels[::3] == [0, 10, 20]
    partial_index = tmp_path / "partial.txt"
    partial_index.write_text(f"{WNIDS[0]}\n")
    with pytest.raises(data.DataError, match=WNIDS[1]):
        data.list_folders(root, data.read_class_index(str(partial_index)))


def test_the_shipped_wnid_list_is_imagenet_1k_in_index_order():
    wnids = data.imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert (wnids[0], wnids[217], wnids[999]) == ("n01440764", "n02102040", "n15075141")
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert all(data.imagenet_index()[w] == i for w, i in data.IMAGENETTE_CLASSES.items())
    digest = hashlib.sha256(("\n".join(wnids) + "\n").encode()).hexdigest()
    assert digest == "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15"  # = timm's list


def test_folders_that_are_not_imagenet_wnids_are_an_error(tmp_path):
    root = make_folders(tmp_path / "val", per_class=1, wnids=("n01440764", "n99999999", "cats"))
    with pytest.raises(
        data.DataError, match=r"val: class 'cats' is not an ImageNet-1k wnid \(2 of 3 unknown"
    ):
        data.list_folders(root)
    mapped = tmp_path / "map.txt"  # other names need an explicit map to ImageNet indices
    mapped.write_text("n01440764 0\nn99999999 5\ncats 281\n")
    assert data.list_folders(root, data.read_class_index(str(mapped))).labels == [281, 0, 5]
    mapped.write_text("n01440764 0\nn99999999 5\ncats 1000\n")
    with pytest.raises(
        data.DataError, match=r"map\.txt: line 3: cats has class index 1000, outside the model's 0\.\.999"
    ):
        data.read_class_index(str(mapped))


CLASS_INDEX_ERRORS = {
    "a typo in an index": (
        "n01440764 0\nn02102040 5x\n",
        "line 2: class index '5x' of n02102040 is not a whole number >= 0; write '<wnid> <index>' with the "
        "index in 0..999, or '<wnid>' alone to use the line number",
    ),
    "a negative index": (
        "n01440764 -3\n",
        "line 1: class index '-3' of n01440764 is not a whole number >= 0; write '<wnid> <index>' with the "
        "index in 0..999, or '<wnid>' alone to use the line number",
    ),
    "two indices": (
        "n01440764 5 6\n",
        "line 1: class index '5 6' of n01440764 is not a whole number >= 0; write '<wnid> <index>' with the "
        "index in 0..999, or '<wnid>' alone to use the line number",
    ),
    "one index for two wnids (line numbers count blank lines)": (
        "n01440764 7\n\nn02102040 7\n",
        "n01440764 (line 1) and n02102040 (line 3) both have class index 7, which would merge two classes; "
        "give each wnid its own index",
    ),
    "indexed and line-number lines mixed": (
        "n01440764\nn02102040 5\n",
        "line 2 gives a class index but line 1 does not; give every line an index ('<wnid> <index>') or "
        "none (the line number is the index)",
    ),
    "indexed and words lines mixed": (
        "n01440764 3\nn02102040 English springer\n",
        "line 1 gives a class index but line 2 does not; give every line an index ('<wnid> <index>') or "
        "none (the line number is the index)",
    ),
    "a wnid twice": (
        "n01440764 3\nn01440764 4\n",
        "wnid n01440764 is listed twice (lines 1 and 2); list it once",
    ),
}


@pytest.mark.parametrize("case", sorted(CLASS_INDEX_ERRORS))
def test_a_bad_class_index_file_names_the_line_the_value_and_the_fix(tmp_path, case):
    content, message = CLASS_INDEX_ERRORS[case]
    path = tmp_path / "index.txt"
    path.write_text(content)
    with pytest.raises(data.DataError) as error:  # these were read silently before (line number as index)
        data.read_class_index(str(path))
    assert str(error.value) == f"{path}: {message}"


def test_class_index_words_and_explicit_indices_read_as_documented(tmp_path):
    path = tmp_path / "index.txt"
    path.write_text("n01440764\tTinca tinca\n\nn02102040 springer\nn03888257 parachute, chute\n")
    assert data.read_class_index(str(path)) == {"n01440764": 0, "n02102040": 1, "n03888257": 2}
    path.write_text("n01440764 3\nn02102040  999 \n")
    assert data.read_class_index(str(path)) == {"n01440764": 3, "n02102040": 999}


LABEL_MAP_ERRORS = {
    "a label twice": (
        "1 n01440764\n1 n02102040\n",
        "label 1 is given twice, to n01440764 (line 1) and n02102040 (line 2); give each label one wnid",
    ),
    "a wnid twice": (
        "1 n01440764\n\n2 n01440764\n",
        "labels 1 (line 1) and 2 (line 3) both name n01440764, which would merge two classes; give each "
        "label its own wnid",
    ),
    "not a label": ("--1 n01440764\n", "line 1: '--1 n01440764' is not '<integer label> <wnid>'"),
}


@pytest.mark.parametrize("case", sorted(LABEL_MAP_ERRORS))
def test_a_bad_label_map_names_the_label_both_wnids_and_the_lines(tmp_path, case):
    content, message = LABEL_MAP_ERRORS[case]
    path = tmp_path / "map.txt"
    path.write_text(content)
    with pytest.raises(data.DataError) as error:  # a repeated label overwrote the earlier wnid before
        data.read_label_map(path)
    assert str(error.value) == f"{path}: {message}"


def test_a_meta_mat_with_a_repeated_leaf_label_is_refused(tmp_path):
    from scipy.io import savemat

    synsets = np.zeros(3, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    synsets[0], synsets[1], synsets[2] = (1, "n01440764", 0), (1, "n99999999", 2), (1, "n02102040", 0)
    savemat(tmp_path / "meta.mat", {"synsets": synsets})
    with pytest.raises(data.DataError) as error:  # row 1 is no leaf: not in the map, so no clash
        data.read_label_map(tmp_path / "meta.mat")
    assert str(error.value) == (
        f"{tmp_path / 'meta.mat'}: label 1 is given twice, to n01440764 (synsets row 0) and n02102040 "
        "(synsets row 2); give each label one wnid"
    )


def test_generated_folders_list_with_the_generated_sets_labels(tmp_path):
    params = data.GeneratedParams(classes=3, per_class=2, size=40)
    listing = data.list_folders(data.write_generated_folders(tmp_path / "val", params))
    assert listing.labels == data.list_generated(params).labels == [0, 0, 1, 1, 2, 2]


def _flat_copy(folders: Path, flat: Path, rng: np.random.Generator) -> dict[str, str]:
    """Copy folder images into one flat folder under shuffled official-style names; name → original."""
    flat.mkdir()
    originals = sorted(p for p in folders.rglob("*.JPEG"))
    order = rng.permutation(len(originals))
    mapping = {}
    for number, position in enumerate(order, start=1):
        name = f"ILSVRC2012_val_{number:08d}.JPEG"
        shutil.copy(originals[position], flat / name)
        mapping[name] = str(originals[position].relative_to(folders))
    return mapping


def test_both_layouts_give_the_same_labels(tmp_path):
    folders = make_folders(tmp_path / "val", per_class=2)
    by_folder = data.list_folders(folders)
    folder_label = dict(zip(by_folder.items, by_folder.labels, strict=True))
    flat = tmp_path / "flat"
    original = _flat_copy(folders, flat, np.random.default_rng(0))
    names = sorted(original)
    # devkit style: 1-based ILSVRC2012_IDs whose order is not the sorted-wnid order, and a map ID → wnid
    devkit_id = {WNIDS[0]: 3, WNIDS[1]: 1, WNIDS[2]: 2}
    wnid_of = {name: original[name].split("/")[0] for name in names}
    ground_truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    ground_truth.write_text("".join(f"{devkit_id[wnid_of[n]]}\n" for n in names))
    label_map = tmp_path / "map.txt"
    label_map.write_text("".join(f"{i} {w}\n" for w, i in devkit_id.items()))
    listing = data.list_flat(flat, ground_truth, label_map)
    # ImageFolder's order of the same files sorted into wnid folders (valprep), not file-name order
    valprep = tmp_path / "valprep"
    for name in names:
        (valprep / wnid_of[name]).mkdir(parents=True, exist_ok=True)
        shutil.copy(flat / name, valprep / wnid_of[name] / name)
    assert listing.items == [Path(item).name for item in data.list_folders(valprep).items]
    assert listing.items == sorted(names, key=lambda n: (wnid_of[n], n)) != names
    assert listing.labels == [folder_label[original[n]] for n in listing.items]
    # the same with wnid labels, and with "<file> <label>" lines in another order
    by_wnid = tmp_path / "gt_wnid.txt"
    by_wnid.write_text("".join(f"{wnid_of[n]}\n" for n in names))
    assert data.list_flat(flat, by_wnid).labels == listing.labels
    by_name = tmp_path / "gt_named.txt"
    by_name.write_text("".join(f"{n} {devkit_id[wnid_of[n]]}\n" for n in reversed(names)))
    assert data.list_flat(flat, by_name, label_map).labels == listing.labels
    # the devkit's meta.mat as label map (leaf synsets only)
    from scipy.io import savemat

    synsets = np.zeros(4, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for row, (wnid, number) in enumerate([*devkit_id.items(), ("n99999999", 9)]):
        synsets[row] = (number, wnid, 0 if number != 9 else 2)
    savemat(tmp_path / "meta.mat", {"synsets": synsets})
    assert data.list_flat(flat, ground_truth, tmp_path / "meta.mat").labels == listing.labels
    # decoding both layouts gives the same pixels per file
    data.decode_to_cache(by_folder, tmp_path / "a", size=64, progress=False)
    data.decode_to_cache(listing, tmp_path / "b", source="flat", size=64, progress=False)
    a, b = load_eval(tmp_path / "a"), load_eval(tmp_path / "b")
    position = {item: i for i, item in enumerate(by_folder.items)}
    for j, name in enumerate(listing.items):
        i = position[original[name]]
        np.testing.assert_array_equal(a.images[i], b.images[j])
        assert a.labels[i] == b.labels[j]


def test_flat_layout_errors(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for n in range(2):
        smooth_image(40, 40, n).save(flat / f"ILSVRC2012_val_{n + 1:08d}.JPEG")
    short = tmp_path / "gt.txt"
    short.write_text("1\n")
    with pytest.raises(data.DataError, match="has 1 labels but .* 2 image files"):
        data.list_flat(flat, short)
    label_map = tmp_path / "map.txt"
    label_map.write_text("1 n01440764\n")
    full = tmp_path / "gt2.txt"
    full.write_text("1\n2\n")
    with pytest.raises(data.DataError, match="label 2 is not in the label map"):
        data.list_flat(flat, full, label_map)
    for bad in (-1, 1000):  # class indices without a label map: stored silently before
        indices = tmp_path / f"gt_{bad}.txt"
        indices.write_text(f"0\n{bad}\n")
        with pytest.raises(
            data.DataError,
            match=rf"gt_{bad}\.txt: label {bad} \(for ILSVRC2012_val_00000002\.JPEG\) is outside the "
            r"ImageNet-1k class indices 0\.\.999 \(1 such labels\)",
        ):
            data.list_flat(flat, indices)
    edges = tmp_path / "gt_edges.txt"
    edges.write_text("0\n999\n")
    assert data.list_flat(flat, edges).labels == [0, 999]


def test_flat_ground_truth_lines_are_read_strictly(tmp_path, capsys):
    """A file named twice with two labels was labelled by its last line; a UTF-8 BOM made the first label
    unreadable ("class '\ufeff…'"); a broken symlink vanished from the listing and the count error then
    blamed the labels; files the ground truth labels but the folder lacks are said, not skipped silently."""
    flat = tmp_path / "flat"
    flat.mkdir()
    names = [f"ILSVRC2012_val_{n + 1:08d}.JPEG" for n in range(2)]
    for n, name in enumerate(names):
        smooth_image(40, 40, n).save(flat / name)
    twice = tmp_path / "gt_twice.txt"
    twice.write_text(f"{names[0]} 3\n{names[1]} 4\n{names[0]} 7\n")
    with pytest.raises(data.DataError) as error:
        data.list_flat(flat, twice)
    assert str(error.value) == f"{twice}: line 3 labels {names[0]} 7, an earlier line 3: keep one"
    bom = tmp_path / "gt_bom.txt"
    bom.write_bytes("\ufeff3\n4\n".encode())
    assert data.list_flat(flat, bom).labels == [3, 4]
    extra = tmp_path / "gt_extra.txt"
    extra.write_text(f"{names[0]} 3\n{names[1]} 4\nILSVRC2012_val_00000099.JPEG 5\n")
    assert data.list_flat(flat, extra).labels == [3, 4]
    assert capsys.readouterr().out.strip() == (
        f"prepare-data: 1 file(s) that {extra} labels are not in {flat} (first: ILSVRC2012_val_00000099.JPEG); "
        "evaluating the 2 that are"
    )
    (flat / "ILSVRC2012_val_00000003.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    listing = data.list_flat(flat, _lines(tmp_path, "3\n4\n5\n"))
    assert listing.items[-1] == "ILSVRC2012_val_00000003.JPEG"  # listed, so decoding names it
    with pytest.raises(data.DataError, match=r"1 file\(s\) cannot be decoded: .*ILSVRC2012_val_00000003"):
        data.decode_to_cache(listing, tmp_path / "cache", source="flat", size=64, progress=False)


def _lines(folder: Path, text: str) -> Path:
    path = folder / "gt_lines.txt"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------- bad files


def _corrupt(root: Path) -> tuple[Path, Path]:
    good = root / WNIDS[1] / f"{WNIDS[1]}_0.JPEG"
    truncated = root / WNIDS[1] / "truncated.JPEG"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    not_image = root / WNIDS[2] / "text.JPEG"
    not_image.write_text("this is not a JPEG")
    return truncated, not_image


def test_corrupt_jpeg_is_an_error_naming_the_file(tmp_path):
    root = make_folders(tmp_path / "val", per_class=2)
    truncated, not_image = _corrupt(root)
    listing = data.list_folders(root)
    with pytest.raises(data.DataError) as error:
        data.decode_to_cache(listing, tmp_path / "cache", size=64, progress=False)
    message = str(error.value)
    assert message.startswith("2 file(s) cannot be decoded: ") and "\n" not in message
    assert str(truncated) in message and str(not_image) in message  # every bad file, not only the first
    assert "on_bad_file: skip" in message
    assert not (tmp_path / "cache" / "images.npy").exists()  # nothing half-written


def test_many_bad_files_are_listed_twenty_and_counted(tmp_path):
    root = make_folders(tmp_path / "val", per_class=1)
    for n in range(23):
        (root / WNIDS[2] / f"bad_{n:02d}.JPEG").write_text("not a JPEG")
    with pytest.raises(data.DataError) as error:
        data.decode_to_cache(data.list_folders(root), tmp_path / "cache", size=64, progress=False)
    message = str(error.value)
    assert message.startswith("23 file(s) cannot be decoded: ")
    assert "bad_19.JPEG" in message and "bad_20.JPEG" not in message and "; and 3 more." in message


def test_skip_counts_bad_files(tmp_path):
    root = make_folders(tmp_path / "val", per_class=2)
    truncated, not_image = _corrupt(root)
    params = data.DataParams(source="folders", root=str(root), on_bad_file="skip")
    with pytest.warns(UserWarning, match="skipping"):
        index = data.prepare(params, tmp_path / "cache", metrics=tmp_path / "data.json", progress=False)
    assert index["skipped_count"] == 2
    assert {s["file"] for s in index["skipped"]} == {
        str(truncated.relative_to(root)),
        str(not_image.relative_to(root)),
    }
    metrics = json.loads((tmp_path / "data.json").read_text())
    assert metrics == {"images": 6, "skipped": 2, "ignored": 0, "classes": 3, "generated": 0}
    assert list(metrics) == ["images", "skipped", "ignored", "classes", "generated"]  # the file's bytes
    cache = load_eval(tmp_path / "cache")
    assert cache.images.shape == (6, 256, 256, 3)
    every = make_folders(tmp_path / "bad", per_class=1)
    for item in data.list_folders(every).items:
        (every / item).write_text("not a JPEG")
    with pytest.raises(data.DataError, match=r"^3 file\(s\) cannot be decoded"):  # skip leaves nothing
        data.decode_to_cache(data.list_folders(every), tmp_path / "none", on_bad_file="skip", progress=False)
    for i, item in enumerate(index["files"]):  # rows stay aligned with files and labels after the skips
        np.testing.assert_array_equal(cache.images[i], data.decode_file(root / item)[0])
    assert cache.labels.tolist() == [0, 0, 217, 217, 701, 701]


def test_modes_are_converted_to_rgb(tmp_path):
    rgb = smooth_image(50, 40)
    root = tmp_path / "val" / WNIDS[0]
    root.mkdir(parents=True)
    variants = {
        "gray.JPEG": rgb.convert("L"),
        "cmyk.JPEG": rgb.convert("CMYK"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
    }
    for name, image in variants.items():
        image.save(root / name)
    for name in variants:
        cached, _ = data.decode_file(root / name)
        assert cached.shape == (256, 256, 3) and cached.dtype == np.uint8
        expected = T.CenterCrop(256)(T.Resize(256)(Image.open(root / name).convert("RGB")))
        np.testing.assert_array_equal(cached, np.asarray(expected))
        if name.startswith("gray"):
            assert (cached[..., 0] == cached[..., 1]).all()


# ----------------------------------------------------------------------------------------------- cache


def _authors_view(image: Image.Image, crop: int, left: int | None = None) -> torch.Tensor:
    """The authors' PIL pipeline: Resize(256), CenterCrop(crop) (or a crop box at ``left``), Resize(224)."""
    resized = T.Resize(256)(image.convert("RGB"))
    if left is None:
        cropped = T.CenterCrop(crop)(resized)
    else:
        top = round((resized.height - crop) / 2)
        cropped = resized.crop((left, top, left + crop, top + crop))
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(T.Resize(224)(cropped)))


def _cache(images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    entries = [data.cache_entry(im) for im in images]
    cache = torch.from_numpy(np.stack([array for array, _ in entries])).permute(0, 3, 1, 2)
    return cache, torch.tensor([shape for _, shape in entries])


# odd long sides (343, 513, 301 after the resize) put the direct 201 and 179 px crops one pixel off the
# cache's center; 256 x 256 and even long sides put them on it
SIZES = [(40, 40), (72, 48), (300, 450), (512, 341), (343, 256), (256, 513), (301, 256)]


@pytest.mark.parametrize("rule", ["authors_code", "paper_text"])
def test_cached_scale_view_is_the_pil_pipeline(rule):
    images = [smooth_image(w, h, i) for i, (w, h) in enumerate(SIZES)]
    cache, resized = _cache(images)
    for percent in (0, 10, 20, 30, 40, 50):
        crop = ablation_crop(percent, rule)
        ours = ablation_view(cache, crop, 224, resized)
        theirs = torch.stack([_authors_view(im, crop) for im in images])
        assert ours.shape == (len(SIZES), 3, 224, 224)
        # the same pixels, resized bit-exactly as PIL: equal up to float rounding in the normalisation
        assert (ours - theirs).abs().max() < 1e-5, (percent, crop)


def test_odd_long_side_crop_lands_where_the_direct_crop_does():
    """343x256: the 256 cache sits at round(87/2) = 44 and the direct 201 px crop at round(142/2) = 71,
    27 into the cache, where the centered crop of the cache starts at round(55/2) = 28."""
    image = smooth_image(343, 256, 5)
    cache, resized = _cache([image])
    assert resized.tolist() == [[256, 343]]
    crop = ablation_crop(10, "authors_code")
    theirs = _authors_view(image, crop)
    exact = ablation_view(cache, crop, 224, resized)[0]
    centered = ablation_view(cache, crop)[0]  # without the resized sizes: the cache's center
    level = 1 / 255 / min(IMAGENET_STD)
    assert (exact - theirs).abs().max() < 1e-5
    assert (exact - _authors_view(image, crop, 44 + 28)).abs().max() > 5 * level  # one pixel matters
    assert (centered - _authors_view(image, crop, 44 + 28)).abs().max() < 1e-5


def test_decoded_cache_keeps_the_resized_sizes(tmp_path):
    root = tmp_path / "val"
    for i, (w, h) in enumerate([(343, 256), (200, 300)]):
        (root / WNIDS[0]).mkdir(parents=True, exist_ok=True)
        smooth_image(w, h, i).save(root / WNIDS[0] / f"img_{i}.png")
    data.decode_to_cache(data.list_folders(root), tmp_path / "eval", progress=False)
    cache = load_eval(tmp_path / "eval")
    assert cache.resized.tolist() == [[256, 343], [384, 256]]
    assert cache.resized_of(torch.tensor([1, 0])).tolist() == [[384, 256], [256, 343]]


def test_cache_without_resized_sizes_asks_for_prepare_data(tmp_path):
    root = tmp_path / "val" / WNIDS[0]
    root.mkdir(parents=True)
    smooth_image(40, 40, 0).save(root / "a.png")
    data.decode_to_cache(data.list_folders(tmp_path / "val"), tmp_path / "eval", progress=False)
    assert sorted(path.name for path in (tmp_path / "eval").iterdir()) == [
        "images.npy",
        "index.json",
        "labels.npy",
        "resized.npy",
    ]  # and no temporary file left
    (tmp_path / "eval" / "resized.npy").unlink()
    with pytest.raises(
        MissingArtifactError, match=r"eval/resized\.npy is missing: it is written by `rsi prepare-data`"
    ):
        load_eval(tmp_path / "eval")


def test_an_index_without_a_key_names_the_file_the_stage_and_the_key(tmp_path):
    listing = data.list_folders(make_folders(tmp_path / "val", per_class=1))
    data.decode_to_cache(listing, tmp_path / "eval", size=64, progress=False)
    index = json.loads((tmp_path / "eval" / "index.json").read_text())
    del index["classes"]
    (tmp_path / "eval" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError) as error:
        read_eval(tmp_path / "eval")
    message = str(error.value)
    assert (
        "\n" not in message and "eval/index.json: no 'classes'" in message and "`rsi prepare-data`" in message
    )


def test_cache_is_torchvision_resize_and_crop():
    image = smooth_image(333, 500, 2)
    expected = np.asarray(T.CenterCrop(256)(T.Resize(256)(image)))
    np.testing.assert_array_equal(data.cache_entry(image)[0], expected)


def test_subsets_are_first_per_class_and_seeded_random(tmp_path):
    listing = data.list_folders(make_folders(tmp_path / "val", per_class=3))
    first = data.select_subset(listing, per_class=2)
    assert first.items == [i for i in listing.items if not i.endswith("_2.JPEG")]
    a = data.select_subset(listing, random_subset=4, seed=0)
    assert a.items == data.select_subset(listing, random_subset=4, seed=0).items
    assert len(a.items) == 4 and a.items == [i for i in listing.items if i in set(a.items)]  # order kept
    seeds = {tuple(data.select_subset(listing, random_subset=4, seed=s).items) for s in range(5)}
    assert len(seeds) > 1
    both = data.select_subset(listing, per_class=1, random_subset=2, seed=0)
    assert len(both.items) == 2 and all(i.endswith("_0.JPEG") for i in both.items)


def test_generated_set_is_deterministic_and_labelled(tmp_path):
    params = data.DataParams(
        source="generated", generated=data.GeneratedParams(classes=2, per_class=2, size=32)
    )
    a = data.prepare(params, tmp_path / "a", seed=3, progress=False)
    data.prepare(params, tmp_path / "b", seed=3, progress=False)
    data.prepare(params, tmp_path / "c", seed=4, progress=False)
    assert a["generated"] is True and a["count"] == 4
    images = {k: np.load(tmp_path / k / "images.npy") for k in "abc"}
    np.testing.assert_array_equal(images["a"], images["b"])
    assert not np.array_equal(images["a"], images["c"])
    assert np.load(tmp_path / "a" / "labels.npy").tolist() == [0, 0, 1, 1]
    assert load_eval(tmp_path / "a").generated
    assert a["decoder"] == "none (generated in memory)"  # no JPEG is encoded or decoded on this path


DECODERS = {  # (Pillow, jpeg API version, libjpeg-turbo version, mozjpeg) → index.json's decoder
    ("13.0.0", "6.2", "3.2.0", False): "Pillow 13.0.0, libjpeg-turbo 3.2.0 (libjpeg 6.2 API)",
    ("10.3.0", "9.0", None, False): "Pillow 10.3.0, libjpeg 9.0",  # IJG libjpeg 9e, as the authors ran
    ("11.0.0", "6.2", "4.1.5", True): "Pillow 11.0.0, mozjpeg 4.1.5 (libjpeg 6.2 API)",
    ("13.0.0", None, None, False): "Pillow 13.0.0, no JPEG support",
}


@pytest.mark.parametrize("versions", sorted(DECODERS, key=str))
def test_the_decoder_names_pillow_and_its_jpeg_library(versions):
    assert data.describe_decoder(*versions) == DECODERS[versions]


def test_the_cache_records_this_processes_jpeg_decoder_and_read_eval_requires_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data.PIL, "__version__", "10.3.0")
    monkeypatch.setattr(data.features, "check_feature", lambda name: False)
    monkeypatch.setattr(data.features, "version", lambda name: "9.0" if name == "jpg" else None)
    listing = data.list_folders(make_folders(tmp_path / "val", per_class=1))
    data.decode_to_cache(listing, tmp_path / "eval", size=64, progress=False)
    assert read_eval(tmp_path / "eval").index["decoder"] == "Pillow 10.3.0, libjpeg 9.0"
    index = json.loads((tmp_path / "eval" / "index.json").read_text())
    del index["decoder"]  # a cache written before the decoder was recorded: no guess, prepare-data again
    (tmp_path / "eval" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match=r"eval/index\.json: no 'decoder'.*`rsi prepare-data`"):
        read_eval(tmp_path / "eval")


def test_workers_decode_the_same(tmp_path):
    listing = data.list_folders(make_folders(tmp_path / "val", per_class=2))
    data.decode_to_cache(listing, tmp_path / "serial", size=64, progress=False)
    data.decode_to_cache(listing, tmp_path / "workers", size=64, workers=2, progress=False)
    np.testing.assert_array_equal(
        np.load(tmp_path / "serial" / "images.npy"), np.load(tmp_path / "workers" / "images.npy")
    )


def test_eval_batches_and_missing_cache(tmp_path):
    listing = data.list_folders(make_folders(tmp_path / "val", per_class=2))
    data.decode_to_cache(listing, tmp_path / "cache", size=64, progress=False)
    cache = load_eval(tmp_path / "cache")
    assert (cache.size, cache.view_size) == (64, 56)
    seen = []
    for index, images, labels in cache.batches([5, 1, 3], batch_size=2):
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 64, 64)
        for i, image, label in zip(index.tolist(), images, labels.tolist(), strict=True):
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), cache.images[i])
            assert label == cache.labels[i]
            seen.append(i)
    assert seen == [5, 1, 3]
    with pytest.raises(FileNotFoundError, match="rsi prepare-data"):
        load_eval(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------- download


def _archive(tmp_path: Path) -> tuple[Path, str]:
    make_folders(tmp_path / "src" / "tiny" / "val", per_class=1, size=32)
    archive = tmp_path / "tiny.tgz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(tmp_path / "src" / "tiny", arcname="tiny")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_download_archive_checks_sha256(tmp_path):
    archive, sha = _archive(tmp_path)
    (tmp_path / "dl").mkdir()
    got = data.download_archive(archive.as_uri(), sha, tmp_path / "dl", progress=False)
    assert got == tmp_path / "dl" / "tiny.tgz" and got.read_bytes() == archive.read_bytes()
    with pytest.raises(data.DataError, match="expected " + "0" * 64):
        data.download_archive(archive.as_uri(), "0" * 64, tmp_path / "bad.tgz", progress=False)
    assert not (tmp_path / "bad.tgz").exists()
    assert not list(tmp_path.glob(".bad.tgz*"))  # the temporary file is gone too
    with pytest.raises(data.DataError, match="could not download"):
        data.download_archive((tmp_path / "absent.tgz").as_uri(), sha, tmp_path / "x.tgz", progress=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_download_from_local_http_server_then_prepare(tmp_path):
    archive, sha = _archive(tmp_path)
    handler = partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        params = data.DataParams(
            source="folders",
            root=str(tmp_path / "data" / "tiny" / "val"),
            class_index="imagenette",
            download=data.DownloadParams(url=url, sha256=sha, into=str(tmp_path / "data")),
        )
        index = data.prepare(params, tmp_path / "cache", progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert index["count"] == 3
    assert np.load(tmp_path / "cache" / "labels.npy").tolist() == [0, 217, 701]
    assert (tmp_path / "data" / "tiny.tgz").is_file()


@pytest.mark.parametrize("tar_filter", ["data", "none"], ids=["python>=3.11.4", "python<3.11.4"])
def test_extract_refuses_escaping_paths_and_links(tmp_path, monkeypatch, tar_filter):
    if tar_filter == "none":  # as on 3.11.0 - 3.11.3, which have no tarfile filters
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile filters")
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as handle:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        handle.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(data.DataError, match=r"evil\.tar: refusing to extract.*escape\.txt"):
        data.extract_archive(evil, tmp_path / "into")
    assert not (tmp_path / "escape.txt").exists()

    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as handle:
        link = tarfile.TarInfo("val/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        handle.addfile(link)
    with pytest.raises(data.DataError, match=r"linked\.tar: refusing to extract"):
        data.extract_archive(linked, tmp_path / "into2")

    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as handle:
        info = tarfile.TarInfo("val/n01/a.txt")
        info.size = 2
        handle.addfile(info, io.BytesIO(b"ok"))
    assert (data.extract_archive(good, tmp_path / "into3") / "val" / "n01" / "a.txt").read_bytes() == b"ok"


@pytest.mark.parametrize("tar_filter", ["data", "none"], ids=["python>=3.11.4", "python<3.11.4"])
def test_absolute_member_paths_are_refused(tmp_path, monkeypatch, tar_filter):
    if tar_filter == "none":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    absolute = tmp_path / "absolute.tar"  # tar's data filter alone would strip the "/" and unpack it
    with tarfile.open(absolute, "w") as handle:
        info = tarfile.TarInfo("/abs.txt")
        info.size = 1
        handle.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(data.DataError, match=r"absolute\.tar: refusing to extract '/abs\.txt': an absolute"):
        data.extract_archive(absolute, tmp_path / "into")
    zipped = tmp_path / "absolute.zip"
    with zipfile.ZipFile(zipped, "w") as handle:
        handle.writestr("/abs.txt", "x")
    with pytest.raises(data.DataError, match=r"absolute\.zip: refusing to extract '/abs\.txt'"):
        data.extract_archive(zipped, tmp_path / "into")
    assert list((tmp_path / "into").iterdir()) == []


def _tar_with_a_bad_last_member(tmp_path: Path) -> Path:
    """tiny/val/... images, then a link tar's data filter refuses while unpacking (not in the name check)."""
    make_folders(tmp_path / "src" / "tiny" / "val", per_class=1, size=32)
    archive = tmp_path / "bad.tgz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(tmp_path / "src" / "tiny", arcname="tiny")
        link = tarfile.TarInfo("tiny/val/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        handle.addfile(link)
    return archive


def test_a_refused_archive_leaves_nothing_behind(tmp_path):
    archive = _tar_with_a_bad_last_member(tmp_path)
    into = tmp_path / "data"
    with pytest.raises(data.DataError, match=r"bad\.tgz: refusing to extract"):
        data.extract_archive(archive, into)
    assert list(into.iterdir()) == []  # not the members before the bad one, no temporary folder either
    params = data.DataParams(
        root=str(into / "tiny" / "val"),
        download=data.DownloadParams(
            url=archive.as_uri(), sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), into=str(into)
        ),
    )
    for _ in range(2):  # the rerun refuses again instead of using a partial root
        with pytest.raises(data.DataError, match="refusing to extract"):
            data.prepare(params, tmp_path / "cache", progress=False)
    assert sorted(p.name for p in into.iterdir()) == ["bad.tgz"]


def test_a_root_without_the_marker_is_rechecked_against_the_archive(tmp_path, monkeypatch):
    archive, sha = _archive(tmp_path)
    into = tmp_path / "data"
    download = data.DownloadParams(url=archive.as_uri(), sha256=sha, into=str(into))
    params = data.DataParams(root=str(into / "tiny" / "val"), class_index="imagenette", download=download)
    with tarfile.open(archive) as handle:  # what an interrupted or refused unpacking used to leave
        # the image's Python 3.11.2 has no extraction filters (the archive is the test's own)
        handle.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    lost = into / "tiny" / "val" / WNIDS[2] / f"{WNIDS[2]}_0.JPEG"
    kept = lost.read_bytes()
    lost.unlink()
    with pytest.raises(
        data.DataError, match=rf"is not a complete unpacking of .*tiny\.tgz \(tiny/val/{WNIDS[2]}/"
    ):
        data.prepare(params, tmp_path / "cache", progress=False)
    lost.write_bytes(kept[:-1])
    with pytest.raises(data.DataError, match=f"_0.JPEG has {len(kept) - 1} bytes, the archive {len(kept)}"):
        data.prepare(params, tmp_path / "cache", progress=False)
    lost.write_bytes(kept)  # complete: checked once, then the marker vouches for it
    assert data.prepare(params, tmp_path / "cache", progress=False)["count"] == 3
    marker = json.loads((into / "tiny.tgz.unpacked.json").read_text())
    assert marker == {"sha256": sha, "entries": ["tiny"]}
    monkeypatch.setattr(data, "download_archive", lambda *a, **k: pytest.fail("checked again"))
    assert data.prepare(params, tmp_path / "cache", progress=False)["count"] == 3


def test_unpacking_writes_the_marker_and_never_overwrites(tmp_path):
    archive, sha = _archive(tmp_path)
    into = tmp_path / "data"
    data.extract_archive(archive, into)
    assert json.loads((into / "tiny.tgz.unpacked.json").read_text()) == {"sha256": sha, "entries": ["tiny"]}
    with pytest.raises(data.DataError, match=r"tiny exists already, but not from a complete unpacking"):
        data.extract_archive(archive, into)
    assert sorted(p.name for p in into.iterdir()) == ["tiny", "tiny.tgz.unpacked.json"]


# ----------------------------------------------------------------------------------------------- CLI, params


def test_prepare_data_cli(tmp_path, monkeypatch):
    root = make_folders(tmp_path / "val", per_class=1)
    (tmp_path / "params.yaml").write_text(
        f"seed: 1\ncriteria: {{seeds: [1]}}\ndata: {{source: folders, root: {root}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare-data", "--outputs", "outputs", "--metrics", "metrics/data.json"]) == 0
    assert load_eval("outputs/eval").images.shape == (3, 256, 256, 3)
    assert json.loads(Path("metrics/data.json").read_text())["images"] == 3
    with pytest.raises(data.DataError, match="nowhere"):
        data.prepare(data.DataParams(root="nowhere"), tmp_path / "x", progress=False)


def test_params_validation():
    assert load_section({}, "data", data.DataParams).source == "folders"
    with pytest.raises(ParamsError, match="on_bad_file"):
        load_section({"data": {"on_bad_file": "ignore"}}, "data", data.DataParams)
    with pytest.raises(ParamsError, match="per_class"):
        load_section({"data": {"per_class": 0}}, "data", data.DataParams)
    download = {"url": "file:///x.tgz", "sha256": "A" * 64}
    assert load_section({"data": {"download": download}}, "data", data.DataParams).download.sha256 == "a" * 64
    with pytest.raises(ParamsError, match="data.download"):
        load_section({"data": {"download": {"sha256": "abc"}}}, "data", data.DataParams)
    with pytest.raises(ParamsError, match="unknown key data.subset"):
        load_section({"data": {"subset": 3}}, "data", data.DataParams)


# ----------------------------------------------------------------------------------------------- listing


def test_the_listing_digest_changes_exactly_when_prepare_datas_inputs_do(tmp_path):
    """DVC tracks data.root and the label files by path: rsi.data.listing_digest is what it compares
    instead (stage data-listing), over each file's name, label, size and modification time."""
    root = make_folders(tmp_path / "val", per_class=2)
    params = data.DataParams(source="folders", root=str(root))
    first = data.listing_digest(params)
    assert (first.files, first.classes, first.root) == (6, 3, str(root))
    assert data.listing_digest(params) == first  # listed again: the same bytes, no re-run
    assert data.listing_digest(replace(params, per_class=1, random_subset=2)) == first  # subsets: params
    smooth_image(40, 40, 7).save(root / WNIDS[0] / "added.JPEG")
    added = data.listing_digest(params)
    assert added.files == 7 and added.digest != first.digest
    os.utime(root / WNIDS[0] / "added.JPEG", ns=(1, 1))  # the same name and size, touched
    assert data.listing_digest(params).digest not in (first.digest, added.digest)
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"{wnid} {index}\n" for index, wnid in enumerate(WNIDS)))
    relabelled = replace(params, class_index=str(classes))
    before = data.listing_digest(relabelled)
    classes.write_text("".join(f"{wnid} {index + 5}\n" for index, wnid in enumerate(WNIDS)))  # same path
    assert data.listing_digest(relabelled).digest != before.digest
    generated = data.DataParams(source="generated")
    assert data.listing_digest(generated) == data.listing_digest(generated)
    touched = data.listing_digest(params)
    (root / WNIDS[2] / "notes.txt").write_text("no image")  # ignored: counted in index.json and metrics
    assert data.listing_digest(params).digest != touched.digest


def test_an_unmounted_root_keeps_its_last_listing(tmp_path, monkeypatch, capsys):
    """Every `dvc repro` runs data-listing; with data.root unmounted it would stop every run, even one
    that needs no image. The last listing of the same root stands (a DVC output kept between runs)."""
    from rsi import cli

    monkeypatch.chdir(tmp_path)
    root = make_folders(tmp_path / "val", per_class=1)
    Path("params.yaml").write_text(f"data: {{source: folders, root: {root}}}\n")
    assert cli.main(["data-listing"]) == 0
    written = Path("outputs/data_listing.json").read_bytes()
    root.rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert cli.main(["data-listing"]) == 0
    assert Path("outputs/data_listing.json").read_bytes() == written
    assert f"data.root = '{root}' is not there; keeping outputs/data_listing.json" in capsys.readouterr().out
    Path("params.yaml").write_text(f"data: {{source: folders, root: {tmp_path / 'other'}}}\n")
    assert cli.main(["data-listing"]) == 2  # another root: nothing to keep
    assert "no such folder" in capsys.readouterr().err


def test_prepare_data_under_dvc_refuses_images_changed_since_they_were_listed(tmp_path, monkeypatch, capsys):
    from rsi import cli

    monkeypatch.chdir(tmp_path)
    root = make_folders(tmp_path / "val", per_class=1)
    Path("params.yaml").write_text(f"data: {{source: folders, root: {root}}}\n")
    monkeypatch.setenv("DVC_STAGE", "prepare-data")
    assert cli.main(["prepare-data"]) == 2  # DVC runs stage data-listing first: its file is required
    assert (
        "outputs/data_listing.json is missing: it is written by `rsi data-listing`" in capsys.readouterr().err
    )
    assert cli.main(["data-listing"]) == 0
    assert json.loads(Path("outputs/data_listing.json").read_text())["files"] == 3
    smooth_image(40, 40, 7).save(root / WNIDS[1] / "late.JPEG")  # a copy still going on
    assert cli.main(["prepare-data"]) == 2
    error = capsys.readouterr().err
    assert "changed after stage data-listing listed them (outputs/data_listing.json)" in error
    assert cli.main(["data-listing"]) == 0 and cli.main(["prepare-data"]) == 0
    assert load_eval(Path("outputs/eval")).images.shape[0] == 4
    shutil.copytree(root, tmp_path / "copy")  # a listing of another root: data-listing did not run
    Path("params.yaml").write_text(f"data: {{source: folders, root: {tmp_path / 'copy'}}}\n")
    assert cli.main(["prepare-data"]) == 2
    assert "stage data-listing did not run first" in capsys.readouterr().err
