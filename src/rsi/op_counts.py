"""aten calls per optimisation step: the measure of how much per-step work (on CUDA, about one kernel
launch per call) the FZ loop does. A diagnostic for tests and benchmarks; no stage imports it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


class AtenCalls(TorchDispatchMode):
    """Counts every aten call made inside the ``with`` block, by operator name (``calls``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def calls_per_step(
    render: Callable[[int], object], warm_steps: int, short: int = 4, long: int = 8
) -> dict[str, float]:
    """aten calls per step by operator: the difference between a ``long``- and a ``short``-step
    ``render(steps)``, divided by the step difference, after one ``render(warm_steps)`` that makes the
    per-size tables (so one-time work is not counted)."""
    render(warm_steps)
    counts = []
    for steps in (short, long):
        with AtenCalls() as counter:
            render(steps)
        counts.append(counter.calls)
    first, last = counts
    return {name: (last[name] - first[name]) / (long - short) for name in set(first) | set(last)}
