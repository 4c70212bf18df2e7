"""Running a frozen GraphDef in a TensorFlow session: the probes of the graph rewrites and the reference."""

from __future__ import annotations

import numpy as np

from xcit_edge.util.batching import in_batches


def run_graph(graph, input_tensor: str, x: np.ndarray, fetches: list[str],
              batch: int | None = None) -> list[np.ndarray]:
    """`fetches` for input `x` in one TensorFlow session; `graph` a `Frozen` graph (its weights fed) or a
    self-contained GraphDef; `batch` set (a fixed-batch graph): `x` is fed that many images at a time and
    each fetch concatenated along axis 0."""
    (out,) = run_graph_inputs(graph, input_tensor, [x], fetches, batch)
    return out


def run_graph_inputs(graph, input_tensor: str, xs: list[np.ndarray], fetches: list[str],
                     batch: int | None = None) -> list[list[np.ndarray]]:
    """`run_graph` for each input of `xs`, the graph imported once (importing a 24-block graph costs
    about a second, more than running it on a small input)."""
    with GraphSession(graph) as run:
        return [in_batches(lambda part: run(fetches, {input_tensor: part}), x, batch) for x in xs]


class GraphSession:
    """One TensorFlow session over a `Frozen` graph (weights fed from its arrays, not copied into the
    graph) or a self-contained GraphDef; called as `run(fetches, feeds)`. Close it (or use `with`)."""

    def __init__(self, graph):
        from xcit_edge.graph.weights import Frozen
        from xcit_edge.util.tfimport import exact_tensorflow

        tf = exact_tensorflow()
        graph_def, self._weights = (graph.graph_def, graph.feeds()) if isinstance(graph, Frozen) else (graph, {})
        g = tf.Graph()
        with g.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self._sess = tf.compat.v1.Session(graph=g)

    def __call__(self, fetches: list[str], feeds: dict) -> list[np.ndarray]:
        return self._sess.run(fetches, {**self._weights, **feeds})

    def close(self) -> None:
        self._sess.close()

    def __enter__(self) -> GraphSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
