"""In / Pre / Post taps, the in-place trap, truncation and the ablation intervention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.models

from rsi.artifacts import in_fz_source
from rsi.taps import (
    ARCHS,
    BLOCKS,
    TAP_KINDS,
    Tap,
    arch_of,
    block_key,
    block_names,
    block_order,
    capture,
    center,
    forward_from,
    forward_taps,
    num_channels,
    overwrite_channels,
    parse_block,
)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def all_taps(random_model, images) -> dict[Tap, torch.Tensor]:
    taps = [Tap(b, k) for b in BLOCKS for k in ("in", "pre", "post")]
    return forward_taps(random_model, images, taps, detach=True)


@pytest.mark.parametrize("block", BLOCKS)
def test_post_is_relu_of_pre_plus_in(all_taps, block):
    pre, post, skip = all_taps[Tap(block, "pre")], all_taps[Tap(block, "post")], all_taps[Tap(block, "in")]
    assert pre.shape == post.shape == skip.shape
    assert pre.shape[1] == num_channels(block)
    torch.testing.assert_close(post, F.relu(pre + skip), atol=1e-5, rtol=0)


@pytest.mark.parametrize("block", BLOCKS)
def test_pre_has_negative_entries_and_differs_from_post(all_taps, block):
    pre, post = all_taps[Tap(block, "pre")], all_taps[Tap(block, "post")]
    assert (pre < 0).any()
    assert (post >= 0).all()
    assert not torch.allclose(pre, post)


@pytest.mark.parametrize("block", ["2.0", "3.0", "4.0"])
def test_in_of_downsample_blocks_is_the_downsample_output(random_model, images, all_taps, block):
    layer, index = block.split(".")
    module = random_model.get_submodule(f"layer{layer}.{index}")
    with torch.no_grad():
        block_input = all_taps[Tap(f"{int(layer) - 1}.1", "post")]
        expected = module.downsample(block_input)
    torch.testing.assert_close(all_taps[Tap(block, "in")], expected)


@pytest.mark.parametrize("block", ["1.1", "2.1", "3.1", "4.1"])
def test_in_of_identity_blocks_is_the_previous_block_output(all_taps, block):
    previous = f"{block[0]}.0"
    assert torch.equal(all_taps[Tap(block, "in")], all_taps[Tap(previous, "post")])


def test_in_of_block_1_0_is_the_maxpool_output(random_model, images, all_taps):
    model = random_model
    with torch.no_grad():
        expected = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    torch.testing.assert_close(all_taps[Tap("1.0", "in")], expected)


def test_reference_keeping_hook_on_bn2_sees_post_ours_sees_pre(random_model, images):
    kept = {}
    module = random_model.get_submodule("layer2.1.bn2")
    handle = module.register_forward_hook(lambda _m, _i, out: kept.setdefault("bn2", out))
    try:
        with torch.no_grad(), capture(random_model, [Tap("2.1", "pre"), Tap("2.1", "post")]) as ours:
            random_model(images)
    finally:
        handle.remove()
    # lucent's ModuleHook keeps `output` itself: torchvision then adds the skip into it and ReLUs in place.
    assert torch.equal(kept["bn2"], ours[Tap("2.1", "post")])
    assert not torch.allclose(ours[Tap("2.1", "pre")], ours[Tap("2.1", "post")])
    assert (ours[Tap("2.1", "pre")] < 0).any() and (kept["bn2"] >= 0).all()


def _count_module_calls(model, run) -> int:
    calls = []
    handles = [
        m.register_forward_pre_hook(lambda *_: calls.append(1))
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return len(calls)


def test_truncated_forward_matches_full_and_runs_fewer_modules(random_model, images):
    taps = [Tap("2.1", "pre"), Tap("1.1", "post")]
    with torch.no_grad():
        truncated = forward_taps(random_model, images, taps)
        with capture(random_model, taps) as full:
            random_model(images)
        n_truncated = _count_module_calls(random_model, lambda: forward_taps(random_model, images, taps))
        n_full = _count_module_calls(random_model, lambda: random_model(images))
    for tap in taps:
        assert torch.equal(truncated[tap], full[tap])
    # stem (4) + 1.0, 1.1, 2.0 (6 or 8 leaves each, 2.0 has a downsample) + 2.1 (6): 4+6+6+8+6 = 30
    assert n_truncated == 30
    assert n_full == 4 + 6 * 5 + 8 * 3 + 2  # stem, 5 plain blocks, 3 downsample blocks, avgpool + fc


def test_truncation_at_an_in_tap_stops_at_the_previous_block(random_model, images):
    with torch.no_grad():
        n = _count_module_calls(random_model, lambda: forward_taps(random_model, images, [Tap("2.1", "in")]))
    assert n == 4 + 6 + 6 + 8  # through block 2.0 only


def test_forward_taps_keeps_gradients_for_objectives(random_model):
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    value = center(forward_taps(random_model, image, [Tap("3.0", "pre")])[Tap("3.0", "pre")])[0, 5]
    value.backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_forward_from_a_block_post_gives_the_model_logits(random_model, images):
    with torch.no_grad():
        post = forward_taps(random_model, images, [Tap("2.1", "post")])[Tap("2.1", "post")]
        torch.testing.assert_close(forward_from(random_model, "2.1", post), random_model(images))
        last = forward_taps(random_model, images, [Tap("4.1", "post")])[Tap("4.1", "post")]
        torch.testing.assert_close(forward_from(random_model, "4.1", last), random_model(images))


def test_overwrite_channels_changes_exactly_the_chosen_maps():
    activation = torch.randn(2, 6, 4, 4)
    channels = torch.tensor([1, 4])
    out = overwrite_channels(activation, channels, torch.tensor([0.5, -2.0]))
    assert torch.equal(out[:, [0, 2, 3, 5]], activation[:, [0, 2, 3, 5]])
    assert torch.equal(out[:, 1], torch.full((2, 4, 4), 0.5))
    assert torch.equal(out[:, 4], torch.full((2, 4, 4), -2.0))
    assert not torch.equal(activation[:, 1], out[:, 1])  # the input is untouched
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        overwrite_channels(activation, channels, torch.tensor([1.0]))


def test_center_picks_h_half_w_half():
    activation = torch.zeros(1, 2, 7, 6)
    activation[0, 1, 3, 3] = 9.0
    assert center(activation).tolist() == [[0.0, 9.0]]
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        center(torch.zeros(3, 3))


def test_block_names_and_tap_modules():
    assert parse_block("layer2_1") == parse_block("layer2.1") == parse_block("2.1") == "2.1"
    assert block_key("3.0") == "layer3_0"
    assert Tap.parse("2.0/in").module == "layer2.0.downsample"
    assert Tap.parse("2.1/in").module == "layer2.0"
    assert Tap.parse("1.0/in").module == "maxpool"
    assert Tap.parse("3.1/pre").module == "layer3.1.bn2"
    assert str(Tap("layer4_1", "post")) == "4.1/post"
    with pytest.raises(ValueError, match="unknown block '5.0'"):
        parse_block("5.0")
    with pytest.raises(ValueError, match="unknown tap 'mid'"):
        Tap("2.1", "mid")
    with pytest.raises(ValueError, match="must look like"):
        Tap.parse("2.1pre")


# ----------------------------------------------------------------------------------- other ResNets


@pytest.fixture(scope="module")
def resnet50():
    from rsi.model import load_model

    return load_model("random:0", "resnet50")


@pytest.fixture(scope="module")
def resnet50_taps(resnet50, images) -> dict[Tap, torch.Tensor]:
    taps = [Tap(b, k) for b in block_names("resnet50") for k in TAP_KINDS]
    return forward_taps(resnet50, images, taps, detach=True)


@pytest.mark.parametrize("block", block_names("resnet50"))
def test_bottleneck_post_is_exactly_relu_of_pre_plus_in(resnet50_taps, block):
    skip, pre, post = (resnet50_taps[Tap(block, kind)] for kind in TAP_KINDS)
    assert pre.shape == post.shape == skip.shape
    assert pre.shape[1] == num_channels(block, "resnet50") == 256 * 2 ** (int(block[0]) - 1)
    assert torch.equal(post, F.relu(pre + skip))  # the same float operation as torchvision's in-place add


@pytest.mark.parametrize("block", block_names("resnet50"))
def test_bottleneck_pre_is_a_copy_of_bn3_not_the_block_output(resnet50_taps, block):
    pre, post = resnet50_taps[Tap(block, "pre")], resnet50_taps[Tap(block, "post")]
    assert (pre < 0).any() and (post >= 0).all()
    assert not torch.allclose(pre, post)


def test_reference_keeping_hook_on_bn3_sees_post_ours_sees_pre(resnet50, images):
    kept = {}
    handle = resnet50.layer3[4].bn3.register_forward_hook(lambda _m, _i, out: kept.setdefault("bn3", out))
    try:
        with torch.no_grad(), capture(resnet50, [Tap("3.4", "pre"), Tap("3.4", "post")]) as ours:
            resnet50(images)
    finally:
        handle.remove()
    assert torch.equal(kept["bn3"], ours[Tap("3.4", "post")])  # the in-place trap, as with bn2
    assert not torch.allclose(ours[Tap("3.4", "pre")], kept["bn3"])


def test_bottleneck_in_of_1_0_is_its_downsample_and_of_3_5_the_output_of_3_4(resnet50, images, resnet50_taps):
    with torch.no_grad():
        stem = resnet50.maxpool(resnet50.relu(resnet50.bn1(resnet50.conv1(images))))
        torch.testing.assert_close(resnet50_taps[Tap("1.0", "in")], resnet50.layer1[0].downsample(stem))
    assert torch.equal(resnet50_taps[Tap("3.5", "in")], resnet50_taps[Tap("3.4", "post")])
    assert Tap("1.0", "in").module_of("resnet50") == "layer1.0.downsample"
    assert Tap("3.5", "in").module_of("resnet50") == "layer3.4"
    assert Tap("3.5", "pre").module_of("resnet50") == "layer3.5.bn3"
    assert Tap("3.5", "pre").module_of("resnet34") == "layer3.5.bn2"


def test_bottleneck_truncated_forward_and_forward_from(resnet50, images):
    with torch.no_grad():
        post = forward_taps(resnet50, images, [Tap("3.5", "post")])[Tap("3.5", "post")]
        torch.testing.assert_close(forward_from(resnet50, "3.5", post), resnet50(images))
        calls = _count_module_calls(resnet50, lambda: forward_taps(resnet50, images, [Tap("2.1", "in")]))
    # stem (4) + 1.0 (9 calls: 3 convs, 3 BNs, ReLU thrice; + 2 of its downsample) + 1.1, 1.2 (9 each)
    # + 2.0 (11): through 2.0 only
    assert calls == 4 + 11 + 9 + 9 + 11


def test_block_names_follow_each_arch():
    counts = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33, "resnet152": 50}
    assert {arch: len(block_names(arch)) for arch in ARCHS} == counts
    assert block_names() == BLOCKS == ("1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1")
    assert "3.5" in block_names("resnet34") and "3.5" not in block_names("resnet18")
    assert [b for b in block_names("resnet101") if b.startswith("3.")] == [f"3.{k}" for k in range(23)]
    assert parse_block("layer3_22", "resnet101") == "3.22" and block_key("3.22") == "layer3_22"
    assert sorted(["3.10", "3.9", "2.3"], key=block_order) == ["2.3", "3.9", "3.10"]


def test_an_unknown_block_of_an_arch_is_one_line_listing_the_valid_ones():
    with pytest.raises(ValueError) as caught:
        parse_block("layer3_5", "resnet18")
    assert str(caught.value) == (
        "unknown block 'layer3_5': blocks of resnet18 are 1.0, 1.1, 2.0, 2.1, 3.0, 3.1, 4.0, 4.1 (or layerL_K)"
    )
    with pytest.raises(
        ValueError,
        match=r"blocks of resnet101 are 1.0, 1.1, 1.2, 2.0, 2.1, 2.2, 2.3, "
        r"3.0…3.22, 4.0, 4.1, 4.2 \(or layerL_K\)",
    ):
        parse_block("3.23", "resnet101")
    with pytest.raises(ValueError, match="unknown arch 'resnet19': archs are resnet18, resnet34"):
        block_names("resnet19")


def test_arch_of_reads_the_architecture_from_the_model():
    for arch in ARCHS:
        with torch.device("meta"):  # structure only: no weights allocated
            model = getattr(torchvision.models, arch)(weights=None)
        assert arch_of(model) == arch
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        arch_of(torch.nn.Linear(2, 2))


def test_the_in_fz_of_block_l_k_is_the_post_fz_of_l_k_minus_1_in_every_arch():
    assert in_fz_source("1.0") == Tap("1.0", "in")
    assert in_fz_source("3.0") == Tap("3.0", "in")
    assert in_fz_source("2.1") == Tap("2.0", "post")
    assert in_fz_source("3.5") == Tap("3.4", "post")
    assert in_fz_source("layer3_22") == Tap("3.21", "post")
