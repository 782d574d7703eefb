"""Weights: identified by content, one-line errors for files that do not fit, explicit random init, every
ResNet of model.arch, and no silent fallback."""

from __future__ import annotations

import pytest
import torch
import torchvision.models
import yaml

from rsi.config import ParamsError, load_section
from rsi.model import (
    CHECKPOINTS,
    WEIGHTS_FILE,
    Checkpoint,
    WeightsError,
    check_weights_file,
    describe_weights,
    load_model,
    load_resnet18,
    sha256_of,
)
from rsi.runtime import ModelParams


def _saved(tmp_path, state, stem: str) -> tuple[str, str]:
    """``state`` saved as ``<stem>-<its own 8-hex SHA-256 prefix>.pth``: (path, full digest)."""
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    digest = sha256_of(raw)
    named = tmp_path / f"{stem}-{digest[:8]}.pth"
    raw.rename(named)
    return str(named), digest


def test_random_weights_are_seeded_and_eval_mode():
    first, second, other = load_resnet18("random:3"), load_resnet18("random:3"), load_resnet18("random:4")
    assert torch.equal(first.conv1.weight, second.conv1.weight)
    assert not torch.equal(first.conv1.weight, other.conv1.weight)
    assert not first.training
    assert not any(p.requires_grad for p in first.parameters())
    assert describe_weights("random:3") == "RANDOM WEIGHTS (not the paper's model)"
    assert describe_weights("torchvision") == "IMAGENET1K_V1"


def test_random_init_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_resnet18("random:0")
    assert torch.equal(torch.rand(3), expected)


def test_a_custom_resnet18_loads_and_is_labelled_by_its_hash_whatever_its_name(tmp_path):
    """Issue 12.4: a random ResNet18 named finetuned-<own hash>.pth is not IMAGENET1K_V1."""
    state = load_resnet18("random:1").state_dict()
    path, digest = _saved(tmp_path, state, "finetuned")
    model = load_resnet18(path)
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert describe_weights(path) == f"custom weights {digest[:8]}"
    renamed = tmp_path / WEIGHTS_FILE.replace("f37072fd", digest[:8])  # resnet18-<own hash>.pth
    (tmp_path / path).rename(renamed)
    assert describe_weights(str(renamed)) == f"custom weights {digest[:8]}"


def test_the_paper_weights_are_recognised_by_content_not_name(tmp_path, monkeypatch):
    """With the known digest set to a file's own, that file is IMAGENET1K_V1 under any name (the real
    44.7 MB file is not on this machine)."""
    path, digest = _saved(tmp_path, load_resnet18("random:2").state_dict(), "anything")
    monkeypatch.setitem(CHECKPOINTS, "resnet18", Checkpoint("resnet18", WEIGHTS_FILE, digest))
    assert describe_weights(path) == "IMAGENET1K_V1"
    check_weights_file(tmp_path / path)  # the content is what is checked
    monkeypatch.setitem(CHECKPOINTS, "resnet18", Checkpoint("resnet18", WEIGHTS_FILE, digest[:8]))
    assert describe_weights(path) == "IMAGENET1K_V1"  # an 8-hex known prefix works the same way


def test_a_resnet34_state_dict_used_as_resnet18_is_one_line_naming_the_keys(tmp_path):
    """Issue 12.4: named resnet34-<own hash>.pth it used to pass the name check and die in a traceback."""
    state = torchvision.models.resnet34(weights=None).state_dict()
    path, _ = _saved(tmp_path, state, "resnet34")
    with pytest.raises(WeightsError) as caught:
        load_resnet18(path)
    message = str(caught.value)
    assert "\n" not in message
    extra = sorted(set(state) - set(torchvision.models.resnet18(weights=None).state_dict()))
    assert f"does not fit resnet18: {len(extra)} unexpected keys (" in message
    assert "missing" not in message  # resnet34 holds every resnet18 key
    assert message.count("layer") <= 3 + 2  # the first three keys (and the hint), not all of them
    assert "set model.arch to the file's architecture" in message
    assert load_model(path, "resnet34").layer3[5] is not None  # the same file fits resnet34


def test_a_state_dict_of_another_shape_and_missing_keys_are_counted(tmp_path):
    state = load_resnet18("random:0").state_dict()
    state["fc.weight"] = torch.zeros(10, 512)
    del state["layer4.1.bn2.weight"], state["layer4.1.bn2.bias"]
    path, _ = _saved(tmp_path, state, "resnet18")
    with pytest.raises(
        WeightsError,
        match=r"2 missing keys \(layer4.1.bn2.weight, layer4.1.bn2.bias\); "
        r"1 keys of another shape \(fc.weight\)",
    ):
        load_resnet18(path)


def test_random_bytes_are_one_line_not_an_unpickler_traceback(tmp_path):
    """Issue 12.4: junk-<own hash>.pth died in the unpickler."""
    junk = tmp_path / "raw"
    junk.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    named = tmp_path / f"junk-{sha256_of(junk)[:8]}.pth"
    junk.rename(named)
    with pytest.raises(WeightsError) as caught:
        load_resnet18(str(named))
    assert "\n" not in str(caught.value)
    assert f"weights file {named} is not a readable PyTorch state_dict" in str(caught.value)
    wrapped, _ = _saved(tmp_path, {"state_dict": {}, "epoch": 3}, "wrapped")
    with pytest.raises(WeightsError, match="holds a dict, not a state_dict of tensors"):
        load_resnet18(wrapped)


def test_a_file_with_torchvisions_name_but_other_content_is_refused_as_corrupt(tmp_path):
    bad = tmp_path / WEIGHTS_FILE
    torch.save(load_resnet18("random:0").state_dict(), bad)  # loadable, but not the real file
    with pytest.raises(WeightsError, match=r"expected f37072fd47e89c5e… \(prefix f37072fd\)"):
        check_weights_file(bad)
    with pytest.raises(WeightsError, match="corrupt"):
        load_resnet18(str(bad))


def test_missing_file_and_empty_cache_say_how_to_get_the_weights(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="no such file.*random:<seed>"):
        load_resnet18(str(tmp_path / "nope.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="in neither torchvision's cache .* nor data/.*rsi fetch-weights"):
        load_resnet18("torchvision")
    with pytest.raises(WeightsError, match="resnet50-0676ba61.pth is in neither torchvision's cache"):
        load_model("torchvision", "resnet50")


def test_torchvision_weights_are_also_read_where_fetch_weights_puts_them(tmp_path, monkeypatch):
    """`rsi fetch-weights` writes data/<file>; model.weights: torchvision finds it there when the cache
    has none, and checks it by content as it checks the cache (a stand-in of other bytes is refused)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    torch.save(load_resnet18("random:0").state_dict(), tmp_path / "data" / WEIGHTS_FILE)
    with pytest.raises(WeightsError, match=rf"data/{WEIGHTS_FILE}.*corrupt|corrupt.*data/{WEIGHTS_FILE}"):
        load_resnet18("torchvision")


def test_every_arch_builds_with_its_own_blocks_and_labels():
    model = load_model("random:0", "resnet50")
    assert hasattr(model.layer1[0], "bn3") and len(model.layer3) == 6
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert describe_weights("random:0", "resnet34") == "resnet34 RANDOM WEIGHTS (not the paper's model)"
    assert describe_weights("torchvision", "resnet101") == "resnet101 IMAGENET1K_V1"
    with pytest.raises(
        WeightsError,
        match="unknown model.arch 'resnet19': archs are resnet18, resnet34, resnet50, resnet101, resnet152",
    ):
        load_model("random:0", "resnet19")


def test_an_unknown_arch_in_params_is_one_line_listing_the_archs():
    with pytest.raises(ParamsError) as caught:
        load_section({"model": {"arch": "resnet200"}}, "model", ModelParams)
    assert str(caught.value) == (
        "params.yaml: model.arch = 'resnet200' is not allowed: expected one of resnet18, resnet34, resnet50, "
        "resnet101, resnet152"
    )


def test_checkpoint_names_are_torchvisions_imagenet1k_v1_files():
    for arch, known in CHECKPOINTS.items():
        enum = getattr(torchvision.models, f"ResNet{arch.removeprefix('resnet')}_Weights")
        assert enum.IMAGENET1K_V1.url == known.url, arch
        assert known.file == f"{arch}-{known.sha256[:8]}.pth"  # the name's prefix is the content's


def test_cli_reports_weights_errors_without_traceback(tmp_path, monkeypatch, capsys):
    from rsi.cli import main

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "data" / WEIGHTS_FILE
    bad.parent.mkdir()
    bad.write_bytes(b"x")
    assert main(["fetch-weights"]) == 2
    assert "rsi fetch-weights: error: weights file data/resnet18-f37072fd.pth has SHA-256" in (
        capsys.readouterr().err
    )


def test_fetch_weights_takes_the_arch_from_the_flag_or_the_params(tmp_path, monkeypatch, capsys):
    from rsi.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("resnet34-b627a593.pth", "resnet50-0676ba61.pth"):
        (tmp_path / "data" / name).write_bytes(b"x")  # present but not the real file: checked, refused
    assert main(["fetch-weights", "--arch", "resnet34"]) == 2
    assert "data/resnet34-b627a593.pth has SHA-256" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"arch": "resnet50"}}))
    assert main(["fetch-weights"]) == 2
    assert "data/resnet50-0676ba61.pth has SHA-256" in capsys.readouterr().err
