"""Feeding a batch to a graph or session that takes a fixed batch size: one helper for every runtime."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def in_batches(run: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """`run`'s outputs for `x`, fed `batch` items at a time and joined on axis 0.

    Args:
        run: one call on a part of `x`, returning a list of arrays (one per fetched output).
        x: the whole input, batch first.
        batch: the fixed batch the graph takes; None or 0 (a dynamic batch), or `len(x)`: one call.
    Returns:
        One array per output, `len(x)` long on axis 0.
    """
    if not batch or len(x) == batch:
        return list(run(x))
    parts = [run(x[i:i + batch]) for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
