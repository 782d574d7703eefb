"""rsi fz: lucent-exact transforms and parameterisation, batch invariance, resume, torchrun sharding,
storage, and params validation. All on the CPU with the seeded random ResNet18 and tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rsi import fz as fzmod
from rsi.artifacts import fz_file
from rsi.artifacts.fz import read_fz
from rsi.config import ParamsError
from rsi.fz import (
    DEFAULT_BLOCKS,
    BlockFZParams,
    FZParams,
    TapSpec,
    load_fz_params,
    render_block,
    render_channels,
)
from rsi.fz_param import image_batch, initial_spectrum
from rsi.fz_transforms import (
    AUTHORS_ANGLES,
    STANDARD_ANGLES,
    apply_ops,
    draw_table,
    lucent_chain,
    lucent_device,
    plan_draws,
    replay_lucent_draws,
    transform_ops,
)
from rsi.op_counts import calls_per_step
from rsi.runtime import load_npz
from rsi.taps import Tap, forward_taps
from rsi.transforms import normalize

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def tiny(**overrides) -> FZParams:
    settings = dict(steps=4, image_size=32, max_channels=4, batch_channels=2)
    settings.update(overrides)
    settings.setdefault("blocks", {"layer2_1": BlockFZParams(taps=("pre",), jitter=4)})
    return FZParams(**settings)


# ------------------------------------------------------------------------------ lucent equivalence


@pytest.mark.parametrize(
    ("kind", "jitter", "size"),
    [("authors_code", 4, 32), ("authors_code", 0, 32), ("authors_code", 16, 48), ("lucent_standard", 8, 32)],
)
def test_transforms_equal_lucents_own_chain(kind, jitter, size):
    """One image with a fixed draw goes through exactly lucent 0.1.8's transforms (np.random seeded;
    the draw replayed from the same seed)."""
    ops = transform_ops(kind, jitter, size)
    chain = lucent_chain(ops)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    scale_column = sum(op.n_draws for op in ops[: [op.kind for op in ops].index("scale")])
    scales_seen = set()
    with lucent_device(torch.device("cpu")):
        for seed in range(25):
            draws = replay_lucent_draws(ops, seed)
            scales_seen.add(int(draws[0, scale_column]))
            np.random.seed(seed)
            expected = image
            for transform in chain:
                expected = transform(expected)
            [(index, ours)] = apply_ops(ops, image, draws)
            assert index.tolist() == [0]
            assert ours.shape == expected.shape
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert len(scales_seen) >= 3  # the comparison covered shrinking, growing and unit scales


def test_per_image_draws_in_one_batch_equal_single_image_transforms():
    ops = transform_ops("authors_code", 0, 32)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    draws = torch.tensor([[0, 0], [1, 3], [4, 10], [2, 5], [1, 0]])
    groups = apply_ops(ops, images, draws)
    assert len(groups) == 4  # four distinct scales: four interpolation groups
    for index, batch in groups:
        for row, i in enumerate(index.tolist()):
            [(_, alone)] = apply_ops(ops, images[i : i + 1], draws[i : i + 1])
            torch.testing.assert_close(batch[row : row + 1], alone, rtol=0, atol=1e-6)


def test_parameterisation_equals_lucent_param_image():
    from lucent.optvis import param

    size = 33  # odd: lucent keeps one extra frequency column
    spectra = torch.stack([initial_spectrum(0, "2.1", "pre", c, size) for c in range(2)])
    ours_param, ours_image = image_batch(spectra, size, torch.device("cpu"))
    with lucent_device(torch.device("cpu")):
        params, lucent_image = param.image(size, batch=2, decorrelate=True)
    assert params[0].shape == ours_param.shape
    with torch.no_grad():
        params[0].copy_(spectra)
    torch.testing.assert_close(ours_image(), lucent_image(), rtol=0, atol=1e-7)
    # keyed init: a channel's spectrum does not depend on which others are drawn
    torch.testing.assert_close(spectra[1], initial_spectrum(0, "2.1", "pre", 1, size))
    assert not torch.equal(spectra[0], spectra[1])


@pytest.mark.parametrize("choices", [AUTHORS_ANGLES, STANDARD_ANGLES])
def test_rotation_table_rows_equal_the_matrices_made_for_the_drawn_angles(choices):
    """The per-size table of rotation matrices (made once, not at every step) gives, row for row, the
    bytes kornia's get_rotation_matrix2d gives for the drawn angles of any group, as lucent builds them."""
    import kornia

    from rsi.fz_transforms import _rotation_table

    for height, width, n in [(40, 40, 1), (41, 41, 3), (46, 46, 17), (224, 224, 64)]:
        drawn = torch.randint(0, len(choices), (n,), generator=torch.Generator().manual_seed(n))
        angle = torch.tensor(choices, dtype=torch.float32)[drawn]
        center = torch.empty(n, 2)
        center[..., 0] = (width - 1) / 2
        center[..., 1] = (height - 1) / 2
        expected = kornia.get_rotation_matrix2d(center, angle, torch.ones(n, 2))
        assert torch.equal(_rotation_table(tuple(choices), height, width, "cpu")[drawn], expected)


@pytest.mark.parametrize(("side", "batch", "size"), [(40, 1, 4), (41, 3, 4), (46, 17, 16), (225, 7, 8)])
def test_tabled_warps_equal_kornias_translate_and_warp_affine(side, batch, size):
    """The jitter and rotation warps from per-size sampling-matrix tables give the bytes of kornia's
    translate and warp_affine (lucent's calls, which normalise and invert every matrix at every call),
    for any batch of draws."""
    import kornia
    from kornia.geometry.transform import translate

    from rsi.fz_transforms import _jitter, _rotate, _rotation_table

    generator = torch.Generator().manual_seed(side)
    images = torch.rand(batch, 3, side, side, generator=generator)
    shifts = torch.randint(0, size, (batch, 2), generator=generator)
    assert torch.equal(_jitter(images, size, shifts), translate(images, shifts.float()))
    for choices in (AUTHORS_ANGLES, STANDARD_ANGLES):
        drawn = torch.randint(0, len(choices), (batch,), generator=generator)
        matrices = _rotation_table(tuple(choices), side, side, "cpu")[drawn]
        expected = kornia.warp_affine(images, matrices, dsize=(side, side))
        assert torch.equal(_rotate(images, tuple(choices), drawn), expected)


def test_planned_scale_groups_equal_a_sort_at_every_step():
    """The scale groups planned once per batch are the per-step stable sort and counts of the draws."""
    ops = transform_ops("authors_code", 4, 32)
    column = sum(op.n_draws for op in ops[:2])  # pad, jitter: the scale column
    draws = torch.stack([draw_table(ops, 50, torch.Generator().manual_seed(c)) for c in range(7)])
    plan = plan_draws(ops, draws, "cpu")
    assert torch.equal(plan.draws, draws.transpose(0, 1))
    for step in range(50):
        keys = draws[:, step, column]
        assert torch.equal(plan.scale_order[step], torch.argsort(keys, stable=True))
        choices, counts = torch.unique(keys, return_counts=True)
        assert plan.scale_groups[step] == tuple(zip(choices.tolist(), counts.tolist(), strict=True))


@pytest.mark.parametrize("exact", [False, True], ids=["torch_backward", "exact_backward"])
def test_the_optimisation_loop_draws_sorts_and_copies_nothing_on_the_host(random_model, exact, monkeypatch):
    """Per step: no random draw, no sort or count of the draws, no tensor made from host data (on CUDA
    a synchronising copy) and no matrix inverse (on CUDA its error check waits for the device): lucent's
    colour matrix, the ImageNet statistics and the warps' sampling matrices are made once per size.
    Adam's .item() reads its step counter, a CPU tensor. Counted with a dispatch mode over every aten
    call, as the difference between 8 and 4 steps (after a run that made the per-size tables); with
    torch's backward of the transforms and with rsi.adjoints' (what CUDA runs)."""
    monkeypatch.setattr(fzmod, "exact_backward", lambda spec, device: exact)
    spec = TapSpec.of(Tap("2.1", "pre"), tiny(steps=4, batch_channels=3), seed=0, weights="random:0")

    def render(steps: int) -> None:
        fzmod._optimise_batch(random_model, replace(spec, steps=steps), [0, 1, 2], torch.device("cpu"))

    per_step = calls_per_step(render, warm_steps=30)  # 30 steps: every scaled size seen
    for name in ("sort", "_unique2", "randint", "randn", "normal_", "random_", "uniform_"):
        assert per_step.get(name, 0) == 0, name
    assert per_step["grid_sampler_2d"] >= 3  # two jitters and a rotation per scale group
    for name in ("lift_fresh", "linalg_inv_ex", "_linalg_check_errors", "nonzero"):
        assert per_step.get(name, 0) == 0, name
    assert per_step.get("_local_scalar_dense", 0) <= 1


# -------------------------------------------------------------------------------- optimisation


def test_a_whole_channel_fz_starts_from_its_own_noise_and_transforms(random_model, monkeypatch):
    """Fig. 1's rows 1 and 2 were separate lucent calls: the whole-channel FZ of a channel must not share
    the center-neuron FZ's initial spectrum and transform draws; the center-neuron keys stay as they were."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    inner = fzmod.plan_draws

    def plan_draws(ops, draws, device, exact_backward):
        seen["draws"] = draws.clone()
        return inner(ops, draws, device, exact_backward=exact_backward)

    monkeypatch.setattr(fzmod, "plan_draws", plan_draws)
    runs = {}
    for objective in ("center", "channel"):
        spec = TapSpec.of(Tap("2.1", "pre"), tiny(steps=3), seed=0, weights="random:0", objective=objective)
        images = fzmod._optimise_batch(random_model, replace(spec, steps=0), [1], torch.device("cpu"))[0]
        fzmod._optimise_batch(random_model, spec, [1], torch.device("cpu"))
        runs[objective] = (images, seen["draws"])
    (center, center_draws), (channel, channel_draws) = runs["center"], runs["channel"]
    assert not torch.equal(center, channel) and not torch.equal(center_draws, channel_draws)
    spectrum = initial_spectrum(0, "2.1", "pre", 1, 32)  # the key the center-neuron FZ always had
    assert torch.equal(spectrum, initial_spectrum(0, "2.1", "pre", 1, 32, ""))
    assert not torch.equal(spectrum, initial_spectrum(0, "2.1", "pre", 1, 32, "channel"))


def test_the_pre_reading_keys_the_pre_tap_only():
    """fz.pre_reading changes the Pre objective and nothing else: the In and Post FZs (and their resume
    chunks) are the same under both readings, so switching it re-renders Pre only."""
    for kind, same in (("in", True), ("post", True), ("pre", False)):
        exact, reference = (
            TapSpec.of(Tap("2.0", kind), tiny(pre_reading=reading), seed=0, weights="random:0", jitter=0)
            for reading in ("exact", "lucent_reference")
        )
        assert (exact.hash() == reference.hash()) is same, kind
        assert ("pre_reading" in exact.settings()) is not same, kind


def test_the_exact_backward_is_used_on_cuda_unless_native_is_declared():
    deterministic = TapSpec.of(Tap("2.1", "pre"), tiny(), seed=0, weights="random:0")
    native = TapSpec.of(Tap("2.1", "pre"), tiny(cuda_backward="native"), seed=0, weights="random:0")
    assert fzmod.exact_backward(deterministic, torch.device("cuda", 0))
    assert not fzmod.exact_backward(native, torch.device("cuda", 0))
    assert not fzmod.exact_backward(
        deterministic, torch.device("cpu")
    )  # torch's CPU backward is deterministic
    assert deterministic.settings()["cuda_backward"] == "deterministic"
    assert deterministic.hash() != native.hash()  # a declared param: it keys the resume chunks


def test_an_unknown_cuda_backward_names_the_key_and_the_choices():
    with pytest.raises(
        ParamsError,
        match="fz.cuda_backward = 'fast' is not allowed: expected one of 'deterministic', 'native'",
    ):
        load_fz_params({"fz": {"cuda_backward": "fast"}})


def test_a_render_through_the_exact_backward_follows_torchs(random_model, monkeypatch):
    """The same optimisation with rsi.adjoints' backward of the transforms (as on CUDA) ends within float
    rounding of torch's after 6 steps, for a jitter chain (reflect pad, jitters, scale, rotation) and
    the jitter-free one; and twice gives the same bytes."""
    for tap, jitter in [(Tap("2.1", "pre"), 4), (Tap("1.1", "pre"), 0)]:
        spec = TapSpec.of(tap, tiny(steps=6, batch_channels=3), seed=0, weights="random:0", jitter=jitter)
        native = render_channels(random_model, spec, [0, 1, 2])
        monkeypatch.setattr(fzmod, "exact_backward", lambda spec, device: True)
        exact = render_channels(random_model, spec, [0, 1, 2])
        again = render_channels(random_model, spec, [0, 1, 2])
        monkeypatch.undo()
        assert np.array_equal(exact.images, again.images)
        assert not np.array_equal(exact.images, native.images)  # other rounding of the gradient
        np.testing.assert_allclose(exact.images, native.images, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("tap", "jitter"), [(Tap("2.1", "pre"), 4), (Tap("2.0", "in"), 0)])
def test_channel_alone_equals_channel_in_batch_of_four(random_model, tap, jitter):
    spec = TapSpec.of(tap, tiny(steps=5, batch_channels=4), seed=0, weights="random:0", jitter=jitter)
    alone = render_channels(random_model, spec, [2])
    batch = render_channels(random_model, spec, [0, 1, 2, 3])
    assert batch.channels.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(batch.images[2], alone.images[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(batch.objective[2], alone.objective[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(batch.images[1], batch.images[2], atol=1e-3)  # channels differ


@pytest.mark.parametrize("tap", [Tap("2.1", "pre"), Tap("2.0", "in")])
def test_optimisation_raises_the_center_neuron(random_model, tap):
    # Pre and In have no ReLU: a Post channel whose center starts at 0 has no gradient (also in lucent).
    spec = TapSpec.of(tap, tiny(steps=10, image_size=48), seed=0, weights="random:0", jitter=4)
    result = render_channels(random_model, spec, [0, 1, 2, 3])
    assert (result.objective > result.initial_objective + 1e-3).all(), (
        result.initial_objective,
        result.objective,
    )
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_pre_reading_exact_reads_bn2_and_lucent_reference_reads_post(random_model):
    tap = Tap("2.1", "pre")
    initial = {}
    for reading in ("exact", "lucent_reference"):
        spec = TapSpec.of(tap, tiny(steps=1, pre_reading=reading), seed=0, weights="random:0")
        initial[reading] = render_channels(random_model, spec, range(8)).initial_objective
    spectra = torch.stack([initial_spectrum(0, "2.1", "pre", c, 32) for c in range(8)])
    _, image = image_batch(spectra, 32, torch.device("cpu"))
    with torch.no_grad():
        acts = forward_taps(random_model, normalize(image()), [tap, Tap("2.1", "post")], detach=True)
    centers = {t.kind: acts[t][range(8), range(8), 2, 2].numpy() for t in acts}  # 4x4 maps: (H//2, W//2)
    np.testing.assert_allclose(initial["exact"], centers["pre"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(initial["lucent_reference"], centers["post"], rtol=1e-5, atol=1e-6)
    assert (centers["pre"] < 0).any() and not np.allclose(centers["pre"], centers["post"])


def test_out_of_memory_is_one_error_naming_batch_channels_not_a_smaller_batch(random_model, monkeypatch):
    tried: list[int] = []

    def no_memory(model, spec, channels, *args, **kwargs):
        tried.append(len(channels))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(fzmod, "_optimise_batch", no_memory)
    spec = TapSpec.of(Tap("2.1", "pre"), tiny(steps=1, batch_channels=4), seed=0, weights="random:0")
    with pytest.raises(ParamsError) as error:
        render_channels(random_model, spec, range(6))
    assert tried == [4]  # no second try with another batch
    message = str(error.value)
    assert "\n" not in message
    assert (
        "fz.batch_channels = 4" in message and "smaller fz.batch_channels" in message and "e.g. 2" in message
    )
    assert "Tried to allocate 2.00 GiB" in message

    def cpu_no_memory(model, spec, channels, *args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes")

    monkeypatch.setattr(fzmod, "_optimise_batch", cpu_no_memory)
    with pytest.raises(ParamsError, match="fz.batch_channels = 4"):
        render_channels(random_model, spec, range(6))


# ------------------------------------------------------------------------------ files and resume


def test_interrupted_run_resumes_without_redoing_chunks(random_model, tmp_path, monkeypatch):
    rendered: list[int] = []
    optimise = fzmod._optimise_batch

    def counting(model, spec, channels, *args, **kwargs):
        rendered.extend(channels)
        return optimise(model, spec, channels, *args, **kwargs)

    monkeypatch.setattr(fzmod, "_optimise_batch", counting)
    params = tiny(steps=3, max_channels=4, batch_channels=2)

    class Killed(Exception):
        pass

    def kill_after_first(tap, path):
        assert path.is_file()
        raise Killed

    kwargs = dict(seed=0, weights="random:0", progress=False)
    with pytest.raises(Killed):
        render_block(
            random_model, "2.1", params, root=tmp_path / "a", on_chunk_saved=kill_after_first, **kwargs
        )
    assert rendered == [0, 1]
    assert not fz_file(Tap("2.1", "pre"), tmp_path / "a").exists()

    rendered.clear()
    render_block(random_model, "2.1", params, root=tmp_path / "a", **kwargs)
    assert rendered == [2, 3]  # the finished chunk is not rendered again

    rendered.clear()
    render_block(random_model, "2.1", params, root=tmp_path / "b", **kwargs)
    assert rendered == [0, 1, 2, 3]
    resumed = load_npz(fz_file(Tap("2.1", "pre"), tmp_path / "a"))
    straight = load_npz(fz_file(Tap("2.1", "pre"), tmp_path / "b"))
    assert resumed.keys() == straight.keys() == {"images", "channels", "objective", "initial_objective"}
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key])
    assert straight["channels"].tolist() == list(range(4))


def test_changed_settings_do_not_reuse_chunks(random_model, tmp_path, monkeypatch):
    rendered: list[int] = []
    optimise = fzmod._optimise_batch
    monkeypatch.setattr(
        fzmod, "_optimise_batch", lambda m, s, c, *a, **k: rendered.extend(c) or optimise(m, s, c, *a, **k)
    )
    kwargs = dict(seed=0, weights="random:0", progress=False, root=tmp_path)
    render_block(random_model, "2.1", tiny(steps=2, max_channels=2), **kwargs)
    render_block(random_model, "2.1", tiny(steps=3, max_channels=2), **kwargs)
    render_block(random_model, "2.1", tiny(steps=3, max_channels=2), **{**kwargs, "seed": 1})
    assert rendered == [0, 1] * 3
    # other batch geometry: the same channels, but other batches, so other floats: rendered again
    rendered.clear()
    render_block(random_model, "2.1", tiny(steps=3, max_channels=2, batch_channels=1), **kwargs)
    assert rendered == [0, 1]
    spec = TapSpec.of(Tap("2.1", "pre"), tiny(steps=3, max_channels=2), seed=0, weights="random:0")
    other = TapSpec.of(
        Tap("2.1", "pre"), tiny(steps=3, max_channels=2, batch_channels=1), seed=0, weights="x"
    )
    assert spec.describe()["batch_channels"] == 2 and other.hash() != spec.hash()


def test_a_chunk_file_from_other_settings_is_not_reused(random_model, tmp_path, monkeypatch):
    """A chunk file is reused only when it records this tap's settings hash (batch geometry included),
    even if it sits in the right folder with the right channels (e.g. copied by hand)."""
    kwargs = dict(seed=0, weights="random:0", progress=False, root=tmp_path)
    params = tiny(steps=2, max_channels=2)
    render_block(random_model, "2.1", params, **kwargs)
    spec = TapSpec.of(Tap("2.1", "pre"), params, seed=0, weights="random:0")
    path = fzmod.chunk_path(fzmod.resume_dir(spec, tmp_path / ".resume"), [0, 1])
    forged = dict(load_npz(path), resume_key=np.array("0123456789abcdef"))
    np.savez(path, **forged)
    rendered: list[int] = []
    optimise = fzmod._optimise_batch
    monkeypatch.setattr(
        fzmod, "_optimise_batch", lambda m, s, c, *a, **k: rendered.extend(c) or optimise(m, s, c, *a, **k)
    )
    render_block(random_model, "2.1", params, **kwargs)
    assert rendered == [0, 1]
    assert str(load_npz(path)["resume_key"]) == spec.resume_key()


def test_a_chunk_file_from_other_fz_code_is_not_reused(random_model, tmp_path, monkeypatch):
    """DVC re-runs stage fz when a module that computes an FZ changes; the chunks the old code left in
    .resume must then be rendered again, not reused. The settings (and settings.json) are unchanged."""
    kwargs = dict(seed=0, weights="random:0", progress=False, root=tmp_path)
    params = tiny(steps=2, max_channels=2)
    render_block(random_model, "2.1", params, **kwargs)
    settings = (tmp_path / "fz" / "layer2_1" / "settings.json").read_bytes()
    rendered: list[int] = []
    optimise = fzmod._optimise_batch
    monkeypatch.setattr(
        fzmod, "_optimise_batch", lambda m, s, c, *a, **k: rendered.extend(c) or optimise(m, s, c, *a, **k)
    )
    render_block(random_model, "2.1", params, **kwargs)
    assert rendered == []  # the same code: resumed
    monkeypatch.setattr(fzmod, "code_digest", lambda: "edited-fz-code")
    render_block(random_model, "2.1", params, **kwargs)
    assert rendered == [0, 1]
    assert (tmp_path / "fz" / "layer2_1" / "settings.json").read_bytes() == settings


def test_a_finished_render_deletes_the_chunks_of_other_fz_code_but_the_latest_two(
    random_model, tmp_path, monkeypatch
):
    """Chunks of other FZ code can never be reused (their resume keys hold its digest): a finished render
    deletes them, the layout before the per-code folders included, but keeps the two most recently
    written (a reverted edit, or a run of other code still going). Chunks of other settings under this
    code stay (a param changed back reuses them)."""
    kwargs = dict(seed=0, weights="random:0", progress=False, root=tmp_path)
    resume = tmp_path / ".resume"
    before_folders = resume / "fz" / "layer2_1" / "pre" / "0123456789abcdef"  # before 2026-11-27
    before_folders.mkdir(parents=True)
    (before_folders / "chunk_0000.npz").write_bytes(b"old")
    for path in (resume / "fz" / "layer2_1").rglob("*"):
        os.utime(path, (1e9, 1e9))  # written long ago
    codes = [letter * 16 for letter in "abcd"]  # code digests: 16 hex digits
    for code in codes[:3]:
        monkeypatch.setattr(fzmod, "code_digest", lambda code=code: code)
        render_block(random_model, "2.1", tiny(steps=2, max_channels=2), **kwargs)
        time.sleep(0.02)  # distinct modification times
        if code == codes[0]:  # the layout before the per-code folders goes at once, whatever its age
            assert sorted(p.name for p in (resume / "fz").iterdir()) == codes[:1]
    assert sorted(p.name for p in (resume / "fz").iterdir()) == codes[:3]
    monkeypatch.setattr(fzmod, "code_digest", lambda: codes[3])
    render_block(random_model, "2.1", tiny(steps=2, max_channels=2), **kwargs)
    render_block(random_model, "2.1", tiny(steps=3, max_channels=2), **kwargs)
    assert sorted(p.name for p in (resume / "fz").iterdir()) == codes[1:]  # the oldest other code gone
    keys = list((resume / "fz" / codes[3] / "layer2_1" / "pre").iterdir())
    assert len(keys) == 2 and all(list(key.glob("chunk_*.npz")) for key in keys)
    assert list((resume / "locks").iterdir())  # the locks stay


def test_the_fz_code_digest_covers_the_fz_stage_source_deps(tmp_path):
    """FZ_SOURCES are the src/rsi deps of dvc.yaml's fz stage (tests/test_dvc_deps.py holds those equal
    to what the stage imports), and an edit to any one of them changes the digest."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["fz"]["do"]
    deps = [d.removeprefix("src/rsi/") for d in stage["deps"] if d.startswith("src/rsi/")]
    assert sorted(fzmod.FZ_SOURCES) == sorted(deps)
    package = Path(fzmod.__file__).resolve().parent
    copy = tmp_path / "rsi"
    for name in fzmod.FZ_SOURCES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((package / name).read_bytes())
    same = fzmod.sources_digest(copy)
    with open(copy / "fz_transforms.py", "a") as edited:
        edited.write("\n# an edit\n")
    assert same == fzmod.code_digest() and fzmod.sources_digest(copy) != same


@pytest.mark.parametrize("damage", ["empty", "cut short"])
def test_a_chunk_file_a_crash_damaged_is_rendered_again(random_model, tmp_path, monkeypatch, damage):
    """A power loss can leave a chunk empty or cut short (on a disk without the fsync, or a shared one):
    a rerun renders it again rather than stopping on it."""
    kwargs = dict(seed=0, weights="random:0", progress=False, root=tmp_path)
    params = tiny(steps=2, max_channels=2)
    render_block(random_model, "2.1", params, **kwargs)
    spec = TapSpec.of(Tap("2.1", "pre"), params, seed=0, weights="random:0")
    path = fzmod.chunk_path(fzmod.resume_dir(spec, tmp_path / ".resume"), [0, 1])
    whole = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else whole[: len(whole) // 2])
    rendered: list[int] = []
    optimise = fzmod._optimise_batch
    monkeypatch.setattr(
        fzmod, "_optimise_batch", lambda m, s, c, *a, **k: rendered.extend(c) or optimise(m, s, c, *a, **k)
    )
    render_block(random_model, "2.1", params, **kwargs)
    assert rendered == [0, 1] and path.read_bytes() == whole


TWO_BLOCKS = {
    "layer2_1": BlockFZParams(taps=("pre",), jitter=4),
    "layer1_1": BlockFZParams(taps=("pre", "post"), jitter=0),
}


def test_blocks_rendered_in_one_pool_are_the_bytes_of_one_at_a_time(random_model, tmp_path):
    """rsi fz --block all shards every block's (tap, chunk) items together; each item is computed as when
    its block is rendered alone."""
    params = tiny(steps=2, max_channels=3, blocks=TWO_BLOCKS)
    kwargs = dict(seed=0, weights="random:0", progress=False)
    pooled = fzmod.render_blocks(
        random_model, ["2.1", "layer1_1", "1.1"], params, root=tmp_path / "a", **kwargs
    )
    assert sorted(map(str, pooled)) == ["1.1/post", "1.1/pre", "2.1/pre"]
    for block in ("2.1", "1.1"):
        render_block(random_model, block, params, root=tmp_path / "b", **kwargs)
    for name in ("layer1_1", "layer2_1"):
        first, second = (tmp_path / side / "fz" / name for side in ("a", "b"))
        assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())
        for path in first.iterdir():
            assert path.read_bytes() == (second / path.name).read_bytes(), path


def counting_renders(monkeypatch) -> list[tuple[str, int]]:
    """(block, channel) of every channel rendered from now on."""
    rendered: list[tuple[str, int]] = []
    optimise = fzmod._optimise_batch

    def counting(model, spec, channels, *args, **kwargs):
        rendered.extend((spec.block, c) for c in channels)
        return optimise(model, spec, channels, *args, **kwargs)

    monkeypatch.setattr(fzmod, "_optimise_batch", counting)
    return rendered


def test_a_pooled_block_is_rendered_into_chunks_and_its_own_run_only_assembles(
    random_model, tmp_path, monkeypatch
):
    """launch.fz_pool: stale: stage fz@2.1 renders 1.1's chunks too but writes only its own output; then
    fz@1.1 renders nothing and writes the bytes of 1.1 rendered alone."""
    params = tiny(steps=2, max_channels=3, blocks=TWO_BLOCKS)
    kwargs = dict(seed=0, weights="random:0", progress=False)
    rendered = counting_renders(monkeypatch)
    written = fzmod.render_blocks(
        random_model, ["2.1"], params, root=tmp_path / "a", pooled=["1.1"], **kwargs
    )
    assert sorted(map(str, written)) == ["2.1/pre"]
    assert not (tmp_path / "a" / "fz" / "layer1_1").exists()  # the pooled block's output is its stage's
    assert sorted(rendered) == sorted([("2.1", c) for c in range(3)] + [("1.1", c) for c in range(3)] * 2)
    rendered.clear()
    render_block(random_model, "1.1", params, root=tmp_path / "a", **kwargs)
    assert rendered == []
    render_block(random_model, "1.1", params, root=tmp_path / "b", **kwargs)
    render_block(random_model, "2.1", params, root=tmp_path / "b", **kwargs)
    for name in ("layer1_1", "layer2_1"):
        first, second = (tmp_path / side / "fz" / name for side in ("a", "b"))
        assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in second.iterdir())
        for path in first.iterdir():
            assert path.read_bytes() == (second / path.name).read_bytes(), path


def test_a_pooled_block_another_run_holds_is_left_to_it(random_model, tmp_path, monkeypatch, capsys):
    """Only this stage's own blocks stop it when busy: a pooled one is dropped from the pool."""
    params = tiny(steps=2, max_channels=2, blocks=TWO_BLOCKS)
    rendered = counting_renders(monkeypatch)
    held, _ = fzmod._take_lock(fzmod.lock_path(tmp_path / "fz" / "layer1_1", tmp_path / ".resume"))
    try:
        written = fzmod.render_blocks(
            random_model,
            ["2.1"],
            params,
            root=tmp_path,
            pooled=["1.1"],
            seed=0,
            weights="random:0",
            progress=False,
        )
    finally:
        fzmod._release(held)
    assert sorted(map(str, written)) == ["2.1/pre"] and {block for block, _ in rendered} == {"2.1"}
    assert "not pooling layer1_1: another run holds its lock" in capsys.readouterr().out


def test_rank_0_names_chunks_deleted_while_it_waited_instead_of_waiting_for_ever(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        RuntimeError, match=r"chunk files missing after rendering: .*chunk_0000.npz; were they deleted"
    ):
        fzmod._wait_for([(tmp_path / "chunk_0000.npz", [0])], "key", poll_s=0.01, give_up_s=0.05)


def test_only_a_dvc_stage_of_several_processes_pools_the_blocks_dvc_will_run(monkeypatch, tmp_path):
    params = tiny(steps=2, max_channels=2, blocks=TWO_BLOCKS)
    monkeypatch.chdir(tmp_path)  # no dvc.lock: DVC will run every fz stage
    pool = lambda raw: fzmod.blocks_to_pool(raw, "p.yaml", ["2.1"], params, "resnet18")  # noqa: E731
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert pool({}) == []  # by hand: only what was asked for
    monkeypatch.setenv("DVC_STAGE", "fz@layer2_1")
    assert pool({}) == ["layer1_1"]  # launch.fz_pool: stale, the default
    assert pool({"launch": {"fz_pool": "block"}}) == []
    with pytest.raises(ParamsError, match=r"p.yaml: launch.fz_pool = 'all' is not allowed"):
        pool({"launch": {"fz_pool": "all"}})
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {"fz@layer1_1": {"cmd": "rsi fz"}}})
    )
    assert pool({}) == []  # dvc.lock's entry is what there is: DVC will not run fz@layer1_1
    (tmp_path / "dvc.lock").write_text("stages:\n<<<<<<< HEAD\n  fz@layer1_1: [\n")  # a conflict, mid-run
    assert pool({}) == []  # speed only: no pool rather than a failed stage
    monkeypatch.setenv("WORLD_SIZE", "1")
    (tmp_path / "dvc.lock").unlink()
    assert pool({}) == []  # one process: pooling would only delay this block


@pytest.mark.parametrize("chunk_batches", [2, 3])
def test_chunk_size_changes_no_byte(random_model, tmp_path, chunk_batches):
    """fz.chunk_batches is undeclared (speed/resume only): 5 channels in batches of 2, in chunks of 2, 4
    or 6 channels (none divides 5), give byte-identical files."""
    kwargs = dict(seed=0, weights="random:0", progress=False)
    one = tiny(steps=3, max_channels=5, batch_channels=2, chunk_batches=1)
    other = tiny(steps=3, max_channels=5, batch_channels=2, chunk_batches=chunk_batches)
    render_block(random_model, "2.1", one, root=tmp_path / "one", **kwargs)
    render_block(random_model, "2.1", other, root=tmp_path / "other", **kwargs)
    chunks = sorted((tmp_path / "other" / ".resume" / "fz").glob("*/layer2_1/pre/*/chunk_*.npz"))
    assert [len(load_npz(c)["channels"]) for c in chunks] == {2: [4, 1], 3: [5]}[chunk_batches]
    tap = Tap("2.1", "pre")
    a, b = load_npz(fz_file(tap, tmp_path / "one")), load_npz(fz_file(tap, tmp_path / "other"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["channels"].tolist() == [0, 1, 2, 3, 4]


def test_every_stage_that_renders_fzs_declares_the_batch_geometry():
    """fz.batch_channels changes floats, so every stage that renders FZs re-runs when it changes; the
    keys proven byte-identical (fz.chunk_batches, launch/device keys) stay undeclared."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    renderers = {n: s.get("do", s) for n, s in stages.items() if "src/rsi/fz.py" in s.get("do", s)["deps"]}
    assert set(renderers) == {"fz", "stability", "rerun-fz", "pre-reading", "whole-channel"}
    for name, stage in renderers.items():
        assert "fz.batch_channels" in stage["params"], name
        assert "fz.chunk_batches" not in stage["params"], name
    params = yaml.safe_load((REPO / "params.yaml").read_text())["fz"]
    assert load_fz_params({"fz": params}).batch_channels == params["batch_channels"] == 128


_HOLD_LOCK = """
import sys
from dataclasses import replace
from pathlib import Path
from rsi.fz import output_lock
with output_lock(Path(sys.argv[1]), Path(sys.argv[2])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_on_the_same_output_stops_naming_the_holder(random_model, tmp_path, monkeypatch):
    import socket

    rendered: list[int] = []
    optimise = fzmod._optimise_batch
    monkeypatch.setattr(
        fzmod, "_optimise_batch", lambda m, s, c, *a, **k: rendered.extend(c) or optimise(m, s, c, *a, **k)
    )
    out = tmp_path / "outputs"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out / "fz" / "layer2_1"), str(out / ".resume")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        kwargs = dict(seed=0, weights="random:0", progress=False, root=out)
        with pytest.raises(fzmod.BusyError) as error:
            render_block(random_model, "2.1", tiny(steps=1, max_channels=2), **kwargs)
        message = str(error.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and "\n" not in message
        assert rendered == []  # stopped before any work
        # another output (e.g. a stability seed) sharing the resume folder is not blocked
        render_block(random_model, "2.1", tiny(steps=1, max_channels=2), **{**kwargs, "root": tmp_path / "b"})
    finally:
        holder.communicate(input="", timeout=60)  # closing stdin ends the holder, which drops the lock
    rendered.clear()
    render_block(random_model, "2.1", tiny(steps=1, max_channels=2), **kwargs)
    assert rendered == [0, 1] and fz_file(Tap("2.1", "pre"), out).is_file()


def test_uint8_storage_is_value_times_255_truncated(random_model, tmp_path):
    kwargs = dict(seed=0, weights="random:0", progress=False)
    render_block(random_model, "2.1", tiny(storage="float32", max_channels=2), root=tmp_path / "f", **kwargs)
    render_block(random_model, "2.1", tiny(storage="uint8", max_channels=2), root=tmp_path / "u", **kwargs)
    tap = Tap("2.1", "pre")
    full = load_npz(fz_file(tap, tmp_path / "f"))["images"]
    stored = load_npz(fz_file(tap, tmp_path / "u"))["images"]
    assert full.dtype == np.float32 and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, np.floor(full * np.float32(255)).astype(np.uint8))
    assert (np.floor(full * 255) != np.round(full * 255)).any()  # truncation, not rounding, matters here
    back = read_fz(fz_file(tap, tmp_path / "u"))  # the stored bytes, as they are
    assert back.images.dtype == np.uint8 and back.images.shape == (2, 3, 32, 32)
    assert back.channels.dtype == np.int64 and back.channels.tolist() == [0, 1]
    np.testing.assert_array_equal(back.images, stored)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, monkeypatch):
    """Byte-identical FZs from 2 processes with 1-batch chunks and 1 process with one 3-batch chunk
    (5 channels in batches of 2): neither the process count nor the chunk size is a declared param."""
    params = {
        "seed": 3,
        "model": {"weights": "random:0", "device": "cpu"},
        "fz": {
            "steps": 3,
            "image_size": 32,
            "max_channels": 5,
            "batch_channels": 2,
            "storage": "float32",
            "blocks": {
                "layer2_1": {"taps": ["pre", "post"], "jitter": 4},
                "layer1_1": {"taps": ["pre"], "jitter": 0},
            },
        },
    }
    for folder, chunk_batches in (("one", 3), ("two", 1)):
        (tmp_path / folder).mkdir()
        params["fz"]["chunk_batches"] = chunk_batches
        (tmp_path / folder / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torchrun = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "rsi.cli"]
    for folder, command in [
        ("two", [*torchrun, "fz", "--block", "all", "--no-progress"]),  # one pool of both blocks' items
        ("one", [str(VENV_BIN / "rsi"), "fz", "--block", "layer2_1", "--no-progress"]),
        ("one", [str(VENV_BIN / "rsi"), "fz", "--block", "1.1", "--no-progress"]),
    ]:
        done = subprocess.run(
            command, cwd=tmp_path / folder, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    for tap in (Tap("2.1", "pre"), Tap("2.1", "post"), Tap("1.1", "pre")):
        one = load_npz(fz_file(tap, tmp_path / "one" / "outputs"))
        two = load_npz(fz_file(tap, tmp_path / "two" / "outputs"))
        assert one["channels"].tolist() == [0, 1, 2, 3, 4]
        assert one.keys() == two.keys()
        for key in one:
            np.testing.assert_array_equal(two[key], one[key])
    # the ranks shared three chunk files per tap (2 + 2 + 1 channels); one settings.json per block
    chunks = list((tmp_path / "two" / "outputs" / ".resume" / "fz").glob("*/layer2_1/pre/*/chunk_*.npz"))
    assert len(chunks) == 3
    for block in ("layer2_1", "layer1_1"):
        settings = [
            tmp_path / folder / "outputs" / "fz" / block / "settings.json" for folder in ("one", "two")
        ]
        assert settings[0].read_bytes() == settings[1].read_bytes()


# ---------------------------------------------------------------------------------------- params


def test_defaults_are_the_authors_run():
    params = load_fz_params({})
    assert (params.steps, params.lr, params.image_size) == (2560, 0.05, 224)
    assert (params.transforms, params.pre_reading, params.storage) == ("authors_code", "exact", "uint8")
    jitters = {key: block.jitter for key, block in params.blocks.items()}
    assert jitters == {
        "layer1_0": 0,
        "layer1_1": 0,
        "layer2_0": 0,
        "layer2_1": 4,
        "layer3_0": 4,
        "layer3_1": 16,
        "layer4_0": 16,
        "layer4_1": 16,
    }
    assert params.blocks == DEFAULT_BLOCKS
    assert [op.describe() for op in transform_ops("authors_code", 16, 224)] == [
        "pad(16, reflect)",
        "jitter(16)",
        "random_scale([1, 0.975, 1.025, 0.95, 1.05])",
        "random_rotate([-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5])",
        "jitter(8)",
        "center_crop(224)",
    ]
    assert [op.kind for op in transform_ops("authors_code", 0, 224)] == ["scale", "rotate"]


@pytest.mark.parametrize("jitter", [1, 2, 3, -4])
def test_jitter_between_1_and_3_is_rejected(jitter):
    with pytest.raises(ParamsError, match=r"fz\.blocks\.layer2_1\.jitter"):
        load_fz_params({"fz": {"blocks": {"layer2_1": {"taps": ["pre"], "jitter": jitter}}}})


@pytest.mark.parametrize("jitter", [0, 4, 16])
def test_jitter_zero_or_at_least_four_is_accepted(jitter):
    params = load_fz_params({"fz": {"blocks": {"layer2_1": {"taps": ["pre"], "jitter": jitter}}}})
    assert params.block("2.1").jitter == jitter
    kinds = [op.kind for op in TapSpec.of(Tap("2.1", "pre"), params, seed=0, weights="x").ops()]
    assert ("jitter" in kinds) == (jitter > 0)


def test_unknown_block_and_tap_errors_name_the_key(tmp_path, capsys):
    with pytest.raises(ParamsError, match="layer5_0"):
        load_fz_params({"fz": {"blocks": {"layer5_0": {"taps": ["pre"], "jitter": 4}}}})
    with pytest.raises(ParamsError, match="'side'"):
        load_fz_params({"fz": {"blocks": {"layer2_1": {"taps": ["side"], "jitter": 4}}}})
    with pytest.raises(ParamsError, match=r"In of block 2\.1 is block 2\.0's Post"):
        load_fz_params({"fz": {"blocks": {"layer2_1": {"taps": ["in"], "jitter": 4}}}})
    params = load_fz_params({"fz": {"blocks": {"layer2_1": {"taps": ["pre"], "jitter": 4}}}})
    with pytest.raises(ParamsError, match=r"no key layer3_1 .*configured: layer2_1"):
        params.block("3.1")

    from rsi.cli import main

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"weights": "random:0", "device": "cpu"},
                "fz": {
                    "blocks": {
                        "layer2_0": {"taps": ["post"], "jitter": 0},
                        "layer2_1": {"taps": ["pre", "post"], "jitter": 4},
                    }
                },
                "criteria": {"blocks": ["layer2_1"]},
                "ablate": {"blocks": ["layer2_1"]},
            }
        )
    )
    assert main(["fz", "--block", "3.1", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "layer3_1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fz", "--block", "5.0", "--params", str(tmp_path / "params.yaml")])
    assert "unknown block '5.0'" in capsys.readouterr().err


def test_whole_channel_fz_raises_the_channel_mean_not_only_the_center(random_model):
    from rsi.fz import TapSpec, render_channel_fz, render_channels

    fz = load_fz_params(
        {"fz": {"steps": 6, "image_size": 32, "blocks": {"layer2_1": {"taps": ["pre"], "jitter": 0}}}}
    )
    images = render_channel_fz(random_model, Tap("2.1", "pre"), [3, 5], fz, seed=1)
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.float32
    spec = TapSpec.of(Tap("2.1", "pre"), fz, seed=1, weights="", objective="channel")
    result = render_channels(random_model, spec, [3, 5])
    np.testing.assert_array_equal(result.images, images)  # keyed: the same call gives the same images
    assert (result.objective > result.initial_objective).all()  # the whole-channel mean went up
    center = render_channels(random_model, TapSpec.of(Tap("2.1", "pre"), fz, seed=1, weights=""), [3, 5])
    assert not np.allclose(center.images, images)  # a different objective, a different image


def test_the_objectives_are_the_center_neuron_and_the_mean_of_the_whole_map(monkeypatch):
    """Image i's objective reads its own channel c_i at the tap: the center neuron (H//2, W//2) for the
    FZs, the mean of the whole H×W map (lucent's objectives.channel) for the whole-channel FZs."""
    from rsi import fz as module

    acts = torch.zeros(2, 4, 3, 5)
    acts[0, 1] = 2.0
    acts[0, 1, 1, 2] = 17.0  # center of image 0's channel 1: mean (14·2 + 17) / 15 = 3
    acts[1, 3, 0, 0] = 30.0  # a corner of image 1's channel 3: mean 30 / 15 = 2, center 0
    acts[1, 1, 1, 2] = 99.0  # another channel's center: read by neither image
    tap = Tap("2.1", "pre")
    monkeypatch.setattr(module, "forward_taps", lambda model, inputs, taps: {tap: acts})
    images, channels = torch.rand(2, 3, 8, 8), torch.tensor([1, 3])
    center = module._center_values(None, images, tap, channels, False, "center")
    whole = module._center_values(None, images, tap, channels, False, "channel")
    assert center.tolist() == [17.0, 0.0] and whole.tolist() == [3.0, 2.0]


def test_tap_jitter_overrides_the_block_jitter_for_one_tap():
    from rsi.fz import TapSpec

    fz = load_fz_params(
        {"fz": {"blocks": {"layer2_1": {"taps": ["pre", "post"], "jitter": 4, "tap_jitter": {"post": 16}}}}}
    )
    assert TapSpec.of(Tap("2.1", "pre"), fz, seed=0, weights="").jitter == 4
    assert TapSpec.of(Tap("2.1", "post"), fz, seed=0, weights="").jitter == 16
    with pytest.raises(ParamsError, match="tap_jitter"):
        load_fz_params(
            {"fz": {"blocks": {"layer2_1": {"taps": ["pre"], "jitter": 4, "tap_jitter": {"post": 2}}}}}
        )
    with pytest.raises(ParamsError, match="tap_jitter"):
        load_fz_params(
            {"fz": {"blocks": {"layer2_1": {"taps": ["pre"], "jitter": 4, "tap_jitter": {"mid": 8}}}}}
        )


def test_cuda_renders_use_deterministic_cudnn_without_autotuning():
    """cuDNN autotuning picks kernels by timing (per process, per run): a GPU FZ would then depend on more
    than the declared params. The flags are settable without CUDA, so this runs on a CPU."""
    from rsi.fz import _numerics

    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    try:
        with _numerics(torch.device("cuda"), tf32=False):
            assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
            assert torch.backends.cudnn.allow_tf32 is False
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
