"""S(X), the ablation crop rules, and normalisation, on images whose content says where it came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rsi.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ablation_crop,
    ablation_view,
    center_crop,
    center_offset,
    crop_offsets,
    normalize,
    pil_bilinear_weights,
    pil_resize,
    scale_crop,
    shrink_pad,
)


def coordinate_image(side: int) -> torch.Tensor:
    """Channel 0 holds the row index, channel 1 the column index, channel 2 a constant."""
    rows = torch.arange(side, dtype=torch.float32)[:, None].expand(side, side)
    cols = torch.arange(side, dtype=torch.float32)[None, :].expand(side, side)
    return torch.stack([rows, cols, torch.full((side, side), 7.0)])[None]


def test_scale_crop_keeps_the_central_half_and_returns_full_size():
    image = coordinate_image(224)
    out = scale_crop(image, 0.5)
    assert out.shape == (1, 3, 224, 224)
    # the central 112 px are rows/cols 56..167; bilinear upsampling keeps values inside that range
    assert out[0, 0].min() >= 56 - 1e-4 and out[0, 0].max() <= 167 + 1e-4
    assert out[0, 1].min() >= 56 - 1e-4 and out[0, 1].max() <= 167 + 1e-4
    torch.testing.assert_close(out[0, 2], torch.full((224, 224), 7.0))
    # a 2x upsample with half-pixel centers: output pixel 1 sits at source 56 + (1 + 0.5) / 2 - 0.5
    assert out[0, 0, 1, 100].item() == pytest.approx(56.25, abs=1e-4)


def test_scale_crop_is_the_authors_plain_bilinear_resize():
    """S(X) = CenterCrop(112) then torchvision 0.15's tensor Resize(224), not antialiased: the bytes of
    plain bilinear interpolation (align_corners=False), which differ from the antialiased kernel's."""
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    crop = images[..., 56:168, 56:168]
    plain = torch.nn.functional.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.equal(scale_crop(images, 0.5), plain)
    smoothed = torch.nn.functional.interpolate(
        crop, size=(224, 224), mode="bilinear", align_corners=False, antialias=True
    )
    assert not torch.equal(plain, smoothed)


def test_scale_crop_of_a_patch_centered_image_magnifies_the_patch():
    image = torch.zeros(1, 3, 224, 224)
    image[..., 104:120, 104:120] = 1.0  # 16 px square at the center
    out = scale_crop(image, 0.5)
    side = int((out[0, 0, 112] > 0.5).sum())
    assert side == 32  # twice as large


def test_center_crop_offsets_follow_torchvision():
    image = coordinate_image(256)
    crop = center_crop(image, 201)
    assert crop.shape[-2:] == (201, 201)
    assert crop[0, 0, 0, 0].item() == 28 and crop[0, 1, 0, 0].item() == 28  # round(55 / 2) = 28
    with pytest.raises(ValueError, match="cannot center-crop 300"):
        center_crop(image, 300)


@pytest.mark.parametrize(
    ("rule", "crops"),
    [("authors_code", [201, 179, 156, 134, 112]), ("paper_text", [231, 205, 180, 154, 128])],
)
def test_ablation_crop_rules(rule, crops):
    assert [ablation_crop(p, rule) for p in (10, 20, 30, 40, 50)] == crops
    assert ablation_crop(0, rule) == 224


def test_ablation_crop_of_any_percent_follows_the_rule_not_the_nearest_tenth():
    # crop int(224 * (1 - p/100)): 15 % -> 190.4, 25 % -> 168, 99 % -> 2.24 (the scale is not rounded)
    assert [ablation_crop(p) for p in (5, 15, 25, 99)] == [212, 190, 168, 2]
    assert [ablation_crop(p, "paper_text") for p in (15, 25)] == [218, 192]


def test_ablation_crop_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown crop rule 'text'"):
        ablation_crop(10, "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        ablation_crop(120)


@pytest.mark.parametrize(
    ("source", "size"), [(201, 224), (112, 224), (231, 224), (256, 100), (37, 53), (9, 9)]
)
def test_pil_resize_is_bit_exact(source, size):
    rng = np.random.default_rng(source * 1000 + size)
    pixels = rng.integers(0, 256, size=(source, source + 3, 3), dtype=np.uint8)
    pixels[: source // 2] = pixels[: source // 2] // 64 * 64  # flat runs as well as noise: ties happen
    expected = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
    ours = pil_resize(torch.from_numpy(pixels).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0)
    np.testing.assert_array_equal(ours.numpy().astype(np.uint8), expected)
    assert ours.dtype == torch.float32


def test_pil_weights_sum_to_one_in_fixed_point_and_stretch_when_shrinking():
    enlarge = pil_bilinear_weights(112, 224)
    assert enlarge.shape == (224, 112)
    assert ((enlarge > 0).sum(1) <= 2).all()  # two taps when enlarging
    torch.testing.assert_close(enlarge.sum(1).double() / 2**22, torch.ones(224, dtype=torch.float64))
    # output 1 of a 2x enlargement is centred at input 0.75: weights 0.75 (pixel 0) and 0.25 (pixel 1)
    assert enlarge[1, :2].tolist() == [3 * 2**20, 2**20]
    shrink = pil_bilinear_weights(224, 112)
    assert (shrink > 0).sum(1).max() == 4  # the triangle stretched over 4 pixels when halving


def test_center_offset_rounds_halves_to_even_like_torchvision():
    lengths = torch.arange(200, 600)
    for crop in (112, 179, 201, 224, 256):
        assert center_offset(lengths, crop).tolist() == [round((n - crop) / 2.0) for n in range(200, 600)]


def test_crop_offsets_place_the_direct_crop_in_the_cache():
    resized = torch.tensor([[256, 256], [256, 343], [345, 256], [256, 344]])
    # 343: cache at round(87/2) = 44, direct crop at round(142/2) = 71 -> 27; 345: 44 and 72 -> 28
    assert crop_offsets(resized, 201).tolist() == [[28, 28], [28, 27], [28, 28], [28, 28]]
    assert crop_offsets(resized, 224).tolist() == [[16, 16]] * 4


def test_ablation_view_crops_the_center_and_resizes():
    image = torch.zeros(2, 3, 256, 256, dtype=torch.uint8)
    image[..., 28:229, 28:229] = 255  # exactly the 201 px center crop is white
    out = ablation_view(image, 201, 224)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    white = normalize(torch.ones(1, 3, 1, 1))[0, :, 0, 0]
    torch.testing.assert_close(out[0, :, 0, 0], white)
    torch.testing.assert_close(out[1, :, 223, 223], white)
    no_scale = ablation_view(image, 224, 224)
    black = normalize(torch.zeros(1, 3, 1, 1))[0, :, 0, 0]
    torch.testing.assert_close(no_scale[0, :, 0, 0], black)  # the 224 crop starts at 16 < 28


def test_normalize_uses_imagenet_statistics():
    image = torch.tensor(IMAGENET_MEAN)[None, :, None, None].expand(1, 3, 2, 2)
    torch.testing.assert_close(normalize(image), torch.zeros(1, 3, 2, 2))
    ones = normalize(torch.ones(1, 3, 1, 1))[0, :, 0, 0]
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    torch.testing.assert_close(ones, expected)


def test_shrink_pad_halves_and_reflects_back_to_size():
    image = coordinate_image(224)
    out = shrink_pad(image, 112)
    assert out.shape == (1, 3, 224, 224)
    # the middle 112 px hold the whole image, shrunk: columns span 0..223 there
    middle = out[0, 1, 112, 56:168]
    assert middle[0] < 2 and middle[-1] > 221
    torch.testing.assert_close(out[0, 1, 112, 55], out[0, 1, 112, 57])  # reflection about col 56


def test_shrink_pad_samples_without_antialiasing_as_the_authors_torchvision():
    # halving with half-pixel centers: output i samples input x = 2i + 0.5, the mean of pixels 2i, 2i+1.
    # 2-px stripes [1, 1, 0, 0, ...] therefore become [1, 0, 1, 0, ...] without antialiasing ...
    stripes = torch.tensor([1.0, 1.0, 0.0, 0.0] * 56)[None, None, None, :].expand(1, 3, 224, 224)
    plain = shrink_pad(stripes, 112)[0, 0, 112, 56:168]
    torch.testing.assert_close(plain, torch.tensor([1.0, 0.0] * 56))
    # ... and a blur of them with it (PIL's triangle filter spans 4 input pixels when halving)
    smooth = shrink_pad(stripes, 112, antialias=True)[0, 0, 112, 60:164]
    assert smooth.max() < 0.8 and smooth.min() > 0.2
    # a ramp is sampled exactly at 2i + 0.5
    ramp = torch.arange(224.0)[None, None, None, :].expand(1, 3, 224, 224)
    torch.testing.assert_close(shrink_pad(ramp, 112)[0, 0, 0, 56:168], torch.arange(112.0) * 2 + 0.5)
