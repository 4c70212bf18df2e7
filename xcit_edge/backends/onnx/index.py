"""The one index of an ONNX model the rewrites and the quantization fix-ups walk, and the weight arrays they share.

Inside `shared_arrays()` (one `rewrites.optimize` run) every large initializer is turned into a numpy
array once and kept: each pass's `OnnxIndex` and every probe session (`rewrites.common.probe`, which
hands them to ONNX Runtime without a copy) read the same arrays, instead of each making its own copy of
the weights (for a 337 MB model: three to five copies at a time before).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property

import numpy as np

# Initializers this size or larger are shared (and handed to probe sessions as inputs);
# smaller ones (shapes, scalars, per-channel vectors) are converted where they are read.
SHARED_MIN_BYTES = 64 * 1024

_arrays: ContextVar[dict[str, np.ndarray] | None] = ContextVar("xcit_edge_onnx_arrays", default=None)


@contextmanager
def shared_arrays() -> Iterator[dict[str, np.ndarray]]:
    """Large initializers' arrays made once and shared inside the block (by name). Sound because names
    are only ever given to new values: `set_init` makes a fresh name and records its array here, and
    `drop_unused` forgets the arrays of the initializers it removes."""
    token = _arrays.set({})
    try:
        yield _arrays.get()
    finally:
        _arrays.reset(token)


def is_large(t) -> bool:
    """A large initializer (by its declared size, without reading its data)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    itemsize = tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 1
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize >= SHARED_MIN_BYTES


def array_of(t) -> np.ndarray:
    """The initializer `t` as an array: the shared one inside `shared_arrays()` when `t` is large."""
    from onnx import numpy_helper

    cache = _arrays.get()
    if cache is None or not is_large(t):
        return numpy_helper.to_array(t)
    if t.name not in cache:
        _share(cache, t.name, numpy_helper.to_array(t))
    return cache[t.name]


def remember(name: str, value: np.ndarray) -> None:
    """A new initializer's array, shared from now on (inside `shared_arrays()`)."""
    cache = _arrays.get()
    if cache is not None and value.nbytes >= SHARED_MIN_BYTES:
        _share(cache, name, value)


def _share(cache: dict[str, np.ndarray], name: str, value: np.ndarray) -> None:
    value.setflags(write=False)  # shared: a rewrite that changed it in place would change every reader
    cache[name] = value


def forget(names) -> None:
    """Initializers removed from the model: their arrays are no longer shared (and can be freed)."""
    cache = _arrays.get()
    for name in names if cache is not None else ():
        cache.pop(name, None)


class OnnxIndex:
    """Initializers (as arrays), the producer of each tensor and its consumers, built once per model."""

    def __init__(self, model):
        self.model = model
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    @cached_property
    def inits(self) -> dict[str, np.ndarray]:
        """Every initializer as an array (made on first use: a walk over the nodes needs no weight copies)."""
        return {t.name: array_of(t) for t in self.model.graph.initializer}

    def consumer(self, tensor: str, op: str, other=None):
        """The first consumer of `tensor` of type `op` (and satisfying `other`), else None."""
        for n in self.consumers.get(tensor, []):
            if n.op_type == op and (other is None or other(n)):
                return n
        return None

    def const(self, node, skip: str) -> np.ndarray | None:
        """The one initializer `node` reads besides `skip`, else None."""
        vals = [self.inits[i] for i in node.input if i != skip and i in self.inits]
        return vals[0] if len(vals) == 1 else None
