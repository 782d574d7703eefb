"""In / Pre / Post taps, the in-place trap, truncation and the ablation intervention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsi.taps import (
    BLOCKS,
    Tap,
    block_key,
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
