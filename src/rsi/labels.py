"""How a run's figures and report are labelled: random weights, generated evaluation images, the network.

Owns :class:`RunLabels` and :func:`run_labels`, read by `rsi figures` and `rsi report` (a lower module, so
the figures stage does not import the report, nor the model code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rsi.config import load_section
from rsi.runtime import ModelParams, is_random
from rsi.taps import DEFAULT_ARCH


@dataclass(frozen=True)
class RunLabels:
    """How a run must be labelled: random weights, generated evaluation images, a network other than the
    paper's ResNet18."""

    weights: str
    random_weights: bool
    generated_data: bool
    arch: str = DEFAULT_ARCH
    images: int | None = None  # evaluation images in the cache (None: not known here)

    @property
    def network(self) -> str:
        """How titles name the network: ``ResNet34`` for model.arch resnet34."""
        return "ResNet" + self.arch.removeprefix("resnet")


def run_labels(raw: Mapping[str, Any], index: Mapping[str, Any] | None = None) -> RunLabels:
    """The labels of a run with params ``raw`` whose evaluation cache has the index ``index``: its images
    are generated when ``data.source`` is ``generated`` or the cache says so (``"generated": true``)."""
    model = load_section(raw, "model", ModelParams)
    from_cache = index is not None and bool(index["generated"])  # a key of rsi.artifacts.eval.INDEX_KEYS
    generated = (raw.get("data") or {}).get("source") == "generated" or from_cache
    images = len(index["files"]) if index is not None else None
    return RunLabels(model.weights, is_random(model.weights), generated, model.arch, images)
