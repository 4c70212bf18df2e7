"""The one index of a TensorFlow GraphDef that every graph rewrite walks: nodes by name, consumers, constants.

Tensor names are `node:k` (`^node` for a control input); `base_name` gives the node. Frozen graphs carry
inlined function inputs as `Identity(Const)` chains, which `through_identities` / `const_array` see past.
"""

from __future__ import annotations

import numpy as np


def base_name(name: str) -> str:
    """The node a tensor or control-input name refers to."""
    return name.lstrip("^").split(":")[0]


def data_inputs(node) -> list[str]:
    """The node names a node reads data from (control inputs left out)."""
    return [base_name(i) for i in node.input if not i.startswith("^")]


class GraphIndex:
    """Nodes by name and the consumers of each node, built once per GraphDef."""

    def __init__(self, graph_def):
        self.nodes = {n.name: n for n in graph_def.node}
        self.consumers: dict[str, list] = {}
        for n in graph_def.node:
            for i in n.input:
                self.consumers.setdefault(base_name(i), []).append(n)

    def through_identities(self, node):
        """The node an Identity chain reads (inlined function inputs are Identity(Const))."""
        for _ in range(8):
            if node is None or node.op not in ("Identity", "Snapshot"):
                break
            node = self.nodes.get(base_name(node.input[0]))
        return node

    def const_array(self, name: str) -> np.ndarray | None:
        """The value of the Const that tensor `name` is, through Identity chains; None if it is none."""
        from tensorflow.python.framework import tensor_util

        node = self.through_identities(self.nodes.get(base_name(name)))
        return None if node is None or node.op != "Const" else tensor_util.MakeNdarray(node.attr["value"].tensor)
