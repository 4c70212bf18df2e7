"""Running a frozen GraphDef in a TensorFlow session: the probes of the graph rewrites and the reference."""

from __future__ import annotations

import numpy as np

from xcit_edge.util.batching import in_batches


def run_graph(graph_def, input_tensor: str, x: np.ndarray, fetches: list[str],
              batch: int | None = None) -> list[np.ndarray]:
    """`fetches` for input `x` in one TensorFlow session; `batch` set (a fixed-batch graph): `x` is fed that
    many images at a time and each fetch concatenated along axis 0."""
    (out,) = run_graph_inputs(graph_def, input_tensor, [x], fetches, batch)
    return out


def run_graph_inputs(graph_def, input_tensor: str, xs: list[np.ndarray], fetches: list[str],
                     batch: int | None = None) -> list[list[np.ndarray]]:
    """`run_graph` for each input of `xs`, the graph imported once (importing a 24-block graph costs
    about a second, more than running it on a small input)."""
    from xcit_edge.util.tfimport import exact_tensorflow

    tf = exact_tensorflow()

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return [in_batches(lambda part: sess.run(fetches, {input_tensor: part}), x, batch) for x in xs]
