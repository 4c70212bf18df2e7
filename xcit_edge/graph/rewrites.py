"""The TensorFlow-graph rewrites that make any exporter's XCiT one canonical graph, in the order they run.

One ordered list, like the ONNX backend's `PASSES`: each pass takes the frozen GraphDef and what it may
need about it (`GraphSite`) and returns the new GraphDef and how many rewrites it made, the count the
manifest's `rewrites` records under the pass's name. Every pass checks its own rewrites on a probe
input and leaves what it cannot verify alone. XCA fusion (`graph/xca.py`) runs after these, in
`graph.prepare`, because how many blocks must fuse depends on the variant these canonical graphs identify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xcit_edge.graph.canonicalize import canonicalize_gelu
from xcit_edge.graph.shapefold import fold_shape_math


@dataclass(frozen=True)
class GraphSite:
    """Where a pass works: the graph's input tensor and static shape, and the node names it must keep."""

    input_tensor: str
    input_shape: list[int | None]
    keep: list[str]


def _shape_math(graph_def, site: GraphSite):
    graph_def, report = fold_shape_math(graph_def, site.input_tensor, site.input_shape, site.keep)
    return graph_def, report.folded


def _gelu(graph_def, site: GraphSite):
    return canonicalize_gelu(graph_def, site.keep)


PASSES: tuple[tuple[str, Callable], ...] = (
    ("shape_math_folded", _shape_math),  # first: GELU and XCA matching then see constants, not Shape chains
    ("gelu_canonicalized", _gelu),
)


def canonical(graph_def, site: GraphSite) -> tuple[object, dict[str, int]]:
    """Run every pass in order; returns the GraphDef and the count of each pass by name."""
    counts = {}
    for name, rewrite in PASSES:
        graph_def, counts[name] = rewrite(graph_def, site)
    return graph_def, counts
