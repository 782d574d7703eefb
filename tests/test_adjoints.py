"""rsi.adjoints: torch's forward bytes, a correct backward, and sums that do not depend on their order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsi import adjoints
from rsi.fz_transforms import AUTHORS_ANGLES, _rotation_grids, _translation_grids


def _gradients(op, native, shape, seed=0, integer_grad=False):
    """(ours, torch's, our input gradient, torch's, the images, the output gradient) for random images."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(*shape, generator=generator, requires_grad=True)
    ours, theirs = op(images), native(images)
    grad = torch.randn(ours.shape, generator=generator)
    if integer_grad:
        grad = torch.round(grad * 8)
    (ours_grad,) = torch.autograd.grad(ours, images, grad)
    (their_grad,) = torch.autograd.grad(theirs, images, grad)
    return ours, theirs, ours_grad, their_grad, images, grad


def test_sums_are_exact_and_rounded_once_whatever_their_order():
    """1 + 2**-24 + 2**-24 added left to right in float32 stays 1 (each add rounds to even); the exact
    sum 1 + 2**-23 is a float32, and the fixed-point sum gives it in every order."""
    tiny = 2.0**-24
    expected = torch.tensor(1 + 2 * tiny, dtype=torch.float32)
    assert (torch.tensor(1.0) + tiny) + tiny == 1.0  # float32 adds in this order lose both
    for order in ([1.0, tiny, tiny], [tiny, 1.0, tiny], [tiny, tiny, 1.0]):
        grad = torch.tensor(order).reshape(1, 1, 1, 3)
        index = [torch.zeros(1, 1, 3, dtype=torch.int64)]
        weight = [torch.ones(1, 1, 3)]
        total = adjoints.scatter_corners(grad, index, weight, (1, 1))
        assert total.item() == expected.item()


def test_sums_scatter_each_weighted_gradient_to_its_corner():
    """Two output pixels, each with two corners: input[0] = 0.25*g0, input[1] = 0.75*g0 + 0.5*g1,
    input[2] = 0.5*g1 (hand-computed)."""
    grad = torch.tensor([4.0, -2.0]).reshape(1, 1, 1, 2)
    indices = [torch.tensor([[[0, 1]]]), torch.tensor([[[1, 2]]])]
    weights = [torch.tensor([[[0.25, 0.5]]]), torch.tensor([[[0.75, 0.5]]])]
    total = adjoints.scatter_corners(grad, indices, weights, (1, 3))
    assert total.flatten().tolist() == [1.0, 3.0 - 1.0, -1.0]


def test_an_images_gradient_does_not_depend_on_its_batchmates():
    """Each image is scaled to its own largest gradient: image 1's input gradient is the same bytes
    beside an image whose gradients are 1e8 times larger as beside a copy of itself."""
    generator = torch.Generator().manual_seed(4)
    grad = torch.randn(2, 3, 6, 6, generator=generator)
    index = [torch.randint(0, 25, (2, 6, 6), generator=generator) for _ in range(4)]
    weight = [torch.rand(2, 6, 6, generator=generator) for _ in range(4)]
    calm = adjoints.scatter_corners(grad, index, weight, (5, 5))
    loud = adjoints.scatter_corners(torch.stack([grad[0] * 1e8, grad[1]]), index, weight, (5, 5))
    assert torch.equal(calm[1], loud[1])


def test_a_nan_or_infinite_gradient_makes_its_image_nan_and_only_it():
    grad = torch.ones(3, 1, 2, 2)
    grad[0, 0, 0, 1] = float("nan")
    grad[2, 0, 1, 1] = float("inf")
    index = [torch.tensor([[[0, 1], [2, 3]]])] * 4
    weight = [torch.full((1, 2, 2), 0.25)] * 4
    total = adjoints.scatter_corners(grad, index, weight, (2, 2))
    assert total[0].isnan().all() and total[2].isnan().all()
    assert total[1].flatten().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_the_scales_are_exact_powers_of_two():
    exponents = torch.arange(-126, 128, dtype=torch.int32)
    assert torch.equal(adjoints._power_of_two(exponents).double(), torch.pow(2.0, exponents.double()))


@pytest.mark.parametrize("pad", [1, 4, 16])
def test_reflect_pad_backward_folds_the_borders_as_torch_does(pad):
    """Same forward bytes; on integer-valued gradients every order of adds is exact, so the fold equals
    torch's backward bit for bit."""
    shape = (2, 3, 40, 37) if pad < 16 else (1, 3, 224, 224)
    ours, theirs, ours_grad, their_grad, *_ = _gradients(
        lambda x: adjoints.reflect_pad(x, pad),
        lambda x: F.pad(x, [pad] * 4, mode="reflect"),
        shape,
        integer_grad=True,
    )
    assert torch.equal(ours, theirs)
    assert torch.equal(ours_grad, their_grad)


def test_reflect_pad_wider_than_the_image_is_refused():
    with pytest.raises(ValueError, match="reflect pad 5 needs an image side over 5"):
        adjoints.reflect_pad(torch.zeros(1, 1, 5, 9), 5)


@pytest.mark.parametrize(
    ("source", "target"), [((40, 40), (43, 43)), ((232, 232), (227, 227)), ((5, 7), (9, 4))]
)
def test_aligned_resize_backward_equals_torchs_up_to_rounding(source, target):
    ours, theirs, ours_grad, their_grad, *_ = _gradients(
        lambda x: adjoints.resize_aligned(x, target),
        lambda x: F.interpolate(x, size=target, mode="bilinear", align_corners=True),
        (2, 3, *source),
    )
    assert torch.equal(ours, theirs)
    torch.testing.assert_close(ours_grad, their_grad, rtol=0, atol=1e-6 * their_grad.abs().max().item())


@pytest.mark.parametrize("kind", ["jitter", "rotate"])
def test_warp_backward_is_as_close_to_float64_as_torchs(kind):
    """The sampling points are recomputed from the grid in float32, as torch's CUDA kernel does, so the
    weights round like torch's (by up to ~1e-5 px at 232 px): both backward passes are as far from the
    float64 gradient, and the forward bytes are torch's."""
    side, batch = 232, 4
    table = (
        _translation_grids(16, side, side, "cpu")
        if kind == "jitter"
        else _rotation_grids(AUTHORS_ANGLES, side, side, "cpu")
    )
    theta = table[torch.randint(0, table.shape[0], (batch,), generator=torch.Generator().manual_seed(3))]
    grid = F.affine_grid(theta, [batch, 3, side, side], align_corners=False)
    ours, theirs, ours_grad, their_grad, images, grad = _gradients(
        lambda x: adjoints.grid_sample(x, grid),
        lambda x: F.grid_sample(x, grid, align_corners=False),
        (batch, 3, side, side),
    )
    assert torch.equal(ours, theirs)
    images64 = images.detach().double().requires_grad_(True)
    (exact,) = torch.autograd.grad(
        F.grid_sample(images64, grid.double(), align_corners=False), images64, grad.double()
    )
    peak = exact.abs().max().item()
    ours_error = (ours_grad.double() - exact).abs().max().item() / peak
    their_error = (their_grad.double() - exact).abs().max().item() / peak
    assert ours_error < 1e-4 and ours_error <= 2 * their_error + 1e-6


def test_the_grid_gets_no_gradient():
    grid = torch.zeros(1, 4, 4, 2, requires_grad=True)
    with pytest.raises(ValueError, match="differentiates the images only"):
        adjoints.grid_sample(torch.zeros(1, 1, 4, 4), grid)
