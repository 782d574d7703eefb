"""rsi.natural: per-channel center-neuron means and top-k of In/Pre/Post against a direct per-image
computation, rank sharding merged to the one-process result, and the CLI's output files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from rsi import artifacts, cli, data, natural
from rsi.artifacts import ArtifactError, MissingArtifactError
from rsi.artifacts.natural import KEYS, read_natural
from rsi.eval_set import load_eval
from rsi.transforms import IMAGENET_MEAN, IMAGENET_STD

CACHE, VIEW = 64, 56  # a small cache keeps the tests fast; the pipeline uses 256 / 224


def generated_cache(directory: Path, per_class: int, size: int = CACHE) -> Path:
    """``directory`` holding generated images of 3 classes (val/) decoded into outputs/eval at ``size``."""
    params = data.GeneratedParams(classes=3, per_class=per_class, size=40)
    listing = data.list_folders(data.write_generated_folders(directory / "val", params))
    data.decode_to_cache(listing, directory / "outputs" / "eval", size=size, progress=False)
    return directory


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    return generated_cache(tmp_path_factory.mktemp("natural"), per_class=4)


def direct_center_values(model, root: Path, items: list[str], block: str) -> np.ndarray:
    """(3, C, N) center neurons of In, Pre, Post for each image, one image at a time through the PIL
    pipeline (Resize, CenterCrop, ToTensor, Normalize) and plain copying forward hooks."""
    layer, index = (int(x) for x in block.split("."))
    module = getattr(model, f"layer{layer}")[index]
    if index == 0 and layer > 1:
        in_module = module.downsample
    elif index == 1:
        in_module = getattr(model, f"layer{layer}")[0]
    else:
        in_module = model.maxpool
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        in_module.register_forward_hook(lambda m, i, o: seen.__setitem__("in", o.clone())),
        module.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("pre", o.clone())),
        module.register_forward_hook(lambda m, i, o: seen.__setitem__("post", o.clone())),
    ]
    transform = T.Compose(
        [T.Resize(CACHE), T.CenterCrop(VIEW), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    columns = []
    try:
        for item in items:
            with torch.no_grad():
                model(transform(Image.open(root / item).convert("RGB"))[None])
            h, w = seen["post"].shape[-2:]
            columns.append(torch.stack([seen[k][0, :, h // 2, w // 2] for k in ("in", "pre", "post")]))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(columns, dim=-1).numpy()


def test_means_and_topk_equal_direct_computation(random_model, tiny_cache):
    eval_set = load_eval(tiny_cache / "outputs" / "eval")
    results = natural.natural_pass(random_model, eval_set, ["1.1", "2.0"], k=3, batch_size=5, progress=False)
    for block, stats in results.items():
        channels = 64 if block == "1.1" else 128
        assert stats.mean.shape == (3, channels) and stats.topk.shape == (3, channels, 3)
        direct = direct_center_values(random_model, tiny_cache / "val", eval_set.index["files"], block)
        direct[2] = np.maximum(direct[2], 0)  # Post is post-ReLU already; the clamp is a no-op
        np.testing.assert_allclose(stats.mean, direct.mean(-1), rtol=1e-4, atol=1e-5)
        expected = -np.sort(-direct, axis=-1)[..., :3]
        np.testing.assert_allclose(stats.topk_values, expected, rtol=1e-4, atol=1e-5)
        chosen = np.take_along_axis(direct, stats.topk, axis=-1)  # the indices point at those values
        np.testing.assert_allclose(chosen, stats.topk_values, rtol=1e-4, atol=1e-5)
        assert (stats.mean[2] >= 0).all()
        assert (stats.mean[1] < 0).any()  # Pre is bn2's output: it can be negative, unlike Post
        assert not np.allclose(stats.mean[1], stats.mean[2])


def pre_relu_sums(model, images: torch.Tensor, block: str) -> torch.Tensor:
    """(N, C) center of ``block``'s sum before its final ReLU (the input of its second ReLU call), the
    authors' ``prerelu_out``, read by a copying pre-hook in one forward."""
    layer, index = (int(x) for x in block.split("."))
    seen = []
    relu = getattr(model, f"layer{layer}")[index].relu
    handle = relu.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return natural.center(seen[-1])


def test_relu_outputs_rank_by_the_pre_relu_sum_bit_for_bit(random_model):
    from rsi.taps import Tap, forward_taps

    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    arch = "resnet18"
    taps = [Tap("2.1", kind) for kind in ("in", "pre", "post")] + [Tap("2.0", "pre"), Tap("2.0", "in")]
    with torch.no_grad():
        values = forward_taps(random_model, images, taps)
    post, block_in = Tap("2.1", "post"), Tap("2.1", "in")
    assert torch.equal(natural.ranking_values(values, post, arch), pre_relu_sums(random_model, images, "2.1"))
    assert torch.equal(
        natural.ranking_values(values, block_in, arch), pre_relu_sums(random_model, images, "2.0")
    )
    assert torch.equal(natural.ranking_values(values, post, arch).clamp(min=0), natural.center(values[post]))
    assert natural.pre_relu_sources(Tap("2.1", "pre"), arch) is None
    assert natural.pre_relu_sources(Tap("2.0", "in"), arch) is None  # the downsample's output
    assert natural.pre_relu_sources(Tap("1.0", "in"), arch) is None  # the maxpool's output


def test_silent_images_rank_as_the_authors_prerelu_out(random_model, tiny_cache):
    """Post and the In of 1.1 rank every image, the silent ones (Post 0) too, by the pre-ReLU sum."""
    eval_set = load_eval(tiny_cache / "outputs" / "eval")
    total = len(eval_set)
    stats = natural.natural_pass(random_model, eval_set, ["1.1"], k=total, batch_size=5, progress=False)[
        "1.1"
    ]
    transform = T.Compose(
        [T.Resize(CACHE), T.CenterCrop(VIEW), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    root = tiny_cache / "val"
    images = torch.stack(
        [transform(Image.open(root / item).convert("RGB")) for item in eval_set.index["files"]]
    )
    for row, block in ((2, "1.1"), (0, "1.0")):  # Post of 1.1 is 1.1's ReLU; In of 1.1 is 1.0's
        sums = pre_relu_sums(random_model, images, block).T.numpy()  # (C, N)
        ranked = np.take_along_axis(sums, stats.topk[row], axis=-1)
        assert (np.diff(ranked, axis=-1) <= 1e-5).all()
        silent = (stats.topk_values[row] == 0).sum(-1)
        assert (silent >= 3).any()  # channels whose order among silent images is the pre-ReLU sum's
        np.testing.assert_allclose(stats.topk_values[row], np.maximum(ranked, 0), atol=1e-5)


def test_ties_go_to_the_higher_index_as_the_authors_reverse_sort():
    values = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 0.0]])
    index = torch.tensor([[9, 7, 2, 1, 5, 4]])
    top_values, top_index = natural.merge_topk(values, index, 5)
    assert top_values.tolist() == [[3.0, 3.0, 3.0, 1.0, 0.0]] and top_index.tolist() == [[7, 5, 2, 9, 4]]
    # the authors' order: sorted((act, image index) pairs, reverse=True)
    pairs = sorted(zip(values[0].tolist(), index[0].tolist(), strict=True), reverse=True)[:5]
    assert [i for _, i in pairs] == top_index[0].tolist()


def test_rank_shards_merge_to_the_one_process_result(random_model, tiny_cache, monkeypatch):
    eval_set = load_eval(tiny_cache / "outputs" / "eval")
    whole = natural.natural_pass(random_model, eval_set, ["2.1"], k=4, batch_size=3, progress=False)["2.1"]
    shards = []
    for rank in range(3):  # each rank alone (no process group: sums and lists stay local), merged here
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        shards.append(
            natural.natural_pass(random_model, eval_set, ["2.1"], k=4, batch_size=2, progress=False)
        )
    merged_mean = sum(s["2.1"].mean.astype(np.float64) for s in shards)
    np.testing.assert_allclose(merged_mean, whole.mean, rtol=1e-6, atol=1e-7)
    values = torch.from_numpy(np.concatenate([s["2.1"].topk_values for s in shards], -1)).reshape(-1, 12)
    index = torch.from_numpy(np.concatenate([s["2.1"].topk for s in shards], -1)).reshape(-1, 12)
    top_values, top_index = natural.merge_topk(values, index, 4)
    top_index = top_index.reshape(whole.topk.shape).numpy()
    np.testing.assert_allclose(top_values.reshape(whole.topk.shape).numpy(), whole.topk_values, atol=1e-6)
    # the files hold In's and Post's ReLU values, not the pre-ReLU sums the ranks merge by (the two-process
    # test in test_launch.py covers that): their silent images' order is not in the files
    ranked_here = np.ones(whole.topk.shape, dtype=bool)
    ranked_here[[0, 2]] = whole.topk_values[[0, 2]] > 0
    np.testing.assert_array_equal(top_index[ranked_here], whole.topk[ranked_here])
    assert (~ranked_here).any()


def test_cli_writes_one_file_per_block(tiny_cache, monkeypatch):
    monkeypatch.chdir(tiny_cache)
    Path("params.yaml").write_text(
        "model: {weights: 'random:0', device: cpu}\nnatural: {blocks: [layer2_1, '3.1'], k: 20, batch_size: 8}\n"
        "criteria: {blocks: [layer2_1, '3.1']}\n"
    )
    assert cli.main(["natural"]) == 0
    for block, channels in (("2.1", 128), ("3.1", 256)):
        stored = read_natural(block)
        assert stored.mean.shape == (3, channels) and stored.mean.dtype == np.float32
        assert stored.topk.shape == (3, channels, 12)  # k is capped at the 12 images
        assert stored.topk.dtype == np.int64 and stored.topk_values.shape == (3, channels, 12)
        assert stored.count == 12 and "RANDOM" in stored.weights
        assert not stored.generated and stored.numerics == {
            "cudnn_allow_tf32": False,
            "matmul_allow_tf32": False,
        }
        assert sorted(stored.topk[0, 0].tolist()) == list(range(12))
    with np.load(artifacts.natural_file("2.1")) as data:  # exactly what the contract reads, nothing else
        assert data.files == list(KEYS)


def test_natural_tf32_is_the_declared_switch_of_the_pass_and_is_recorded(tiny_cache, monkeypatch, tf32_flags):
    """The authors took the ablation means in a thingsvision pass on CUDA under torch 2.0's TF32 default:
    natural.tf32 turns TF32 on for the pass (the flags are settable without CUDA) and the file says so."""
    seen = []
    inner = natural.natural_pass

    def natural_pass(*args, **kwargs):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return inner(*args, **kwargs)

    monkeypatch.setattr(natural, "natural_pass", natural_pass)
    monkeypatch.chdir(tiny_cache)
    for tf32 in (True, False):
        Path("params.yaml").write_text(
            f"model: {{weights: 'random:0', device: cpu}}\nnatural: {{blocks: ['2.1'], k: 2, tf32: {tf32}}}\n"
            "ablate: {blocks: ['2.1']}\ncriteria: {blocks: ['2.1']}\n"
        )
        assert cli.main(["natural"]) == 0
        assert seen[-1] == (tf32, False)  # convolutions only: torch 2.0 left matmul TF32 off
        assert read_natural("2.1").numerics == {"cudnn_allow_tf32": tf32, "matmul_allow_tf32": False}


def test_a_natural_file_without_a_key_names_the_file_the_stage_and_the_key(tmp_path):
    path = artifacts.natural_file("2.1", tmp_path)
    path.parent.mkdir(parents=True)
    np.savez(path, mean=np.zeros((3, 4), np.float32), topk=np.zeros((3, 4, 2), np.int64))
    with pytest.raises(ArtifactError) as error:
        read_natural("2.1", tmp_path)
    message = str(error.value)
    assert "\n" not in message and f"{path}: no 'topk_values'" in message and "`rsi natural`" in message
    path.unlink()
    with pytest.raises(
        MissingArtifactError, match=r"layer2_1\.npz is missing: it is written by `rsi natural`"
    ):
        read_natural("2.1", tmp_path)
