"""dvc.yaml declares, for every stage, exactly the rsi modules its command runs: a change to any module a
stage imports (directly, lazily or through importlib) re-runs it, and a change to any other re-runs nothing.
Infrastructure that cannot change a result is left out on purpose (see dvc.yaml's header)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from rsi.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "rsi"
# argument dispatch, params parsing/validation, process sharding (tested result-invariant)
INFRASTRUCTURE = {"cli", "config", "distributed"}


def imported_modules(module: str) -> set[str]:
    """rsi modules that ``module`` imports anywhere in its source (importlib strings included)."""
    tree = ast.parse((SRC / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "rsi":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("rsi."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("rsi.")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("rsi."):
            candidate = node.value.split(".")[1]
            if (SRC / f"{candidate}.py").is_file():
                found.add(candidate)
    return found


def closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imported_modules(current))
    return seen


def stages() -> dict[str, dict]:
    out = {}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        out[name] = stage.get("do", stage)
    return out


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_declares_exactly_the_modules_it_runs(name):
    stage = stages()[name]
    command = stage["cmd"].split()[1]
    entry = COMMANDS[command][0].split(".")[1]
    expected = {f"src/rsi/{m}.py" for m in closure(entry) - INFRASTRUCTURE}
    declared = {d for d in stage["deps"] if d.startswith("src/") and d.endswith(".py")}
    assert declared == expected, (
        f"stage {name}: missing {sorted(expected - declared)}, not run {sorted(declared - expected)}"
    )


def test_the_scan_sees_lazy_and_importlib_imports():
    assert "fz" in imported_modules("figures")  # importlib.import_module("rsi.fz")
    assert "model" in imported_modules("figures")  # from rsi.model import ... inside a function


def test_stability_outs_are_the_params_seed_root():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    outs = stages()["stability"]["outs"]
    assert outs == [params["criteria"]["seed_root"].format(seed="${item}")]


def test_package_data_a_module_reads_is_declared_by_its_stages():
    for name, stage in stages().items():
        for module in closure(COMMANDS[stage["cmd"].split()[1]][0].split(".")[1]) - INFRASTRUCTURE:
            source = (SRC / f"{module}.py").read_text()
            for data_file in sorted(SRC.glob("*.txt")):
                if f'"{data_file.name}"' in source:
                    assert f"src/rsi/{data_file.name}" in stage["deps"], (name, data_file.name)
