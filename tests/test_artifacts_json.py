"""Every JSON stage output is read through rsi.artifacts.load_json: a file that is not JSON, or not the
mapping its stage writes, fails with one line naming the file and the stage that writes it (never a bare
JSONDecodeError or AttributeError, which name no file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_figures import write_fake_eval

from rsi.artifacts import ArtifactError
from rsi.artifacts.ablation import read_ablation_metrics
from rsi.artifacts.criteria import read_criteria_metrics, read_seed_passing
from rsi.artifacts.eval import read_eval
from rsi.artifacts.fz import read_fz_settings
from rsi.artifacts.natural_criteria import read_natural_criteria_metrics, read_natural_passing
from rsi.artifacts.passing import read_passing


def _eval_index(root: Path) -> Path:
    import numpy as np

    write_fake_eval(root / "eval", np.random.default_rng(0))
    return root / "eval" / "index.json"


# reader, the file it reads under a root, the stage named in the error
READERS = {
    "passing": (lambda root: read_passing(root / "passing.json"), "passing.json", "criteria"),
    "reference passing": (
        lambda root: read_passing(root / "passing.json", "pre-reading"),
        "passing.json",
        "pre-reading",
    ),
    "criteria metrics": (lambda root: read_criteria_metrics(root / "c.json"), "c.json", "criteria"),
    "seed passing": (lambda root: read_seed_passing(root / "stability.json"), "stability.json", "criteria"),
    "fz settings": (lambda root: read_fz_settings(root / "settings.json"), "settings.json", "fz"),
    "ablation": (lambda root: read_ablation_metrics(root / "ablation.json"), "ablation.json", "ablate"),
    "natural passing": (
        lambda root: read_natural_passing(root),
        "natural_criteria/passing.json",
        "natural-criteria",
    ),
    "natural metrics": (
        lambda root: read_natural_criteria_metrics(root / "n.json"),
        "n.json",
        "natural-criteria",
    ),
}


@pytest.mark.parametrize("content, problem", [('{"2.1": [1,', "not JSON"), ("[1, 2]", "a JSON list")])
@pytest.mark.parametrize("name", sorted(READERS))
def test_a_broken_json_output_names_its_file_and_stage(tmp_path, name, content, problem):
    read, relative, stage = READERS[name]
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with pytest.raises(ArtifactError) as error:
        read(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}: {problem}") and f"`rsi {stage}`" in message
    assert "\n" not in message


def test_the_eval_index_is_checked_the_same_way(tmp_path):
    index = _eval_index(tmp_path)
    index.write_text("[]")
    with pytest.raises(ArtifactError, match=r"index.json: a JSON list, but `rsi prepare-data` writes"):
        read_eval(tmp_path / "eval")
