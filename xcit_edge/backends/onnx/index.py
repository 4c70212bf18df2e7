"""The one index of an ONNX model the rewrites and the quantization fix-ups walk."""

from __future__ import annotations

from functools import cached_property

import numpy as np


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
        from onnx import numpy_helper

        return {t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer}

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
