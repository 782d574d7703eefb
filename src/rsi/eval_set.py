"""The evaluation cache as the result stages read it: :class:`EvalSet` streams batches of the decoded
images to the device, over :func:`rsi.artifacts.eval.read_eval`. Stages natural, natural-criteria and ablate
import it from here rather than from rsi.data, so that editing the listing, download or decode code of
``rsi prepare-data`` re-runs none of them (only a changed cache does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsi.artifacts.eval import read_eval


@dataclass
class EvalSet:
    """The decoded evaluation cache: ``images`` (N, 256, 256, 3) uint8 memmap, ``labels`` (N,) int64,
    ``resized`` (N, 2) int32: each image's (height, width) after ``Resize(256)``, before the 256 crop."""

    images: np.ndarray
    labels: np.ndarray
    index: dict[str, Any]
    resized: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        """The cache side (256 in the pipeline)."""
        return int(self.images.shape[1])

    @property
    def view_size(self) -> int:
        """The model input side: 224 for the 256 cache (the standard Resize(256) + CenterCrop(224))."""
        return self.size * 7 // 8

    @property
    def generated(self) -> bool:
        return bool(self.index["generated"])

    def resized_of(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 2) int64 resized (height, width) of the images at global ``index`` (as batches yields it)."""
        return torch.from_numpy(self.resized[index.cpu().numpy()].astype(np.int64))

    def batches(
        self, indices: Sequence[int] | np.ndarray, batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(global indices, uint8 (B, 3, 256, 256) on device, labels on device) for ``indices`` in order;
        the next batch is read from disk while the caller computes."""
        indices = np.asarray(indices, dtype=np.int64)
        device = torch.device(device)
        chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]

        def read(chunk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            images = torch.from_numpy(np.ascontiguousarray(self.images[chunk]))
            labels = torch.from_numpy(np.ascontiguousarray(self.labels[chunk]))
            if device.type == "cuda":
                images = images.pin_memory()
            return torch.from_numpy(chunk), images, labels

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read, chunks[0]) if chunks else None
            for position in range(len(chunks)):
                assert pending is not None
                index, images, labels = pending.result()
                pending = pool.submit(read, chunks[position + 1]) if position + 1 < len(chunks) else None
                images = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
                yield index, images, labels.to(device, non_blocking=True)


def load_eval(directory: str | Path | None = None) -> EvalSet:
    """Open the cache written by :func:`rsi.data.decode_to_cache` (memory-mapped;
    :func:`rsi.artifacts.eval.read_eval`)."""
    cache = read_eval(None if directory is None else Path(directory))
    return EvalSet(cache.images, cache.labels, cache.index, cache.resized)
