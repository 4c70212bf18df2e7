"""The TensorFlow-graph rewrites that make any exporter's XCiT one canonical graph, in the order they run.

One ordered list, like the ONNX backend's `PASSES`: each pass takes the frozen graph (`graph.weights.Frozen`,
the structure with the weights apart) and what it may need about it (`GraphSite`) and returns the new graph
and how many rewrites it made, the count the manifest's `rewrites` records under the pass's name. Every
pass checks its own rewrites on a probe input and leaves what it cannot verify alone. XCA fusion
(`graph/xca.py`) runs after these, in `graph.prepare`, because how many blocks must fuse depends on the
variant these canonical graphs identify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xcit_edge.graph.canonicalize import canonicalize_gelu
from xcit_edge.graph.shapefold import fold_shape_math
from xcit_edge.graph.weights import Frozen


@dataclass(frozen=True)
class GraphSite:
    """Where a pass works: the graph's input tensor and static shape, and the node names it must keep."""

    input_tensor: str
    input_shape: list[int | None]
    keep: list[str]


def _shape_math(frozen: Frozen, site: GraphSite):
    frozen, report = fold_shape_math(frozen, site.input_tensor, site.input_shape, site.keep)
    return frozen, report.folded


def _gelu(frozen: Frozen, site: GraphSite):
    graph_def, count = canonicalize_gelu(frozen.graph_def, site.keep)
    return frozen.with_graph(graph_def), count


PASSES: tuple[tuple[str, Callable], ...] = (
    ("shape_math_folded", _shape_math),  # first: GELU and XCA matching then see constants, not Shape chains
    ("gelu_canonicalized", _gelu),
)


def canonical(frozen: Frozen, site: GraphSite) -> tuple[Frozen, dict[str, int]]:
    """Run every pass in order; returns the graph and the count of each pass by name."""
    counts = {}
    for name, rewrite in PASSES:
        frozen, counts[name] = rewrite(frozen, site)
    return frozen, counts
