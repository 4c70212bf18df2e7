"""The prepared TensorFlow graph to ONNX with tf2onnx, in steps that keep its memory near the model's size.

tf2onnx's `from_graph_def` freezes the (already frozen) graph again and keeps both GraphDefs, imports the
graph with its constants into TensorFlow, deep-copies the whole ONNX graph (numpy constants included)
before each of its twelve optimizers so it can restore the graph if one fails, and after each one writes
every node's attributes back into its NodeProto. With protobuf's upb backend (protobuf 4+, what
`onnx` installs) a NodeProto's removed attributes stay in its arena until the message dies, so each of
those write-backs keeps one more copy of every constant: on xcit_small_12 (104 MB of weights) the
optimizers alone grew the process by 2.3 GB and `from_graph_def` peaked at 4.5 GiB (measured).

Here, with the same tf2onnx functions:
* grappler runs once (`tf_loader.tf_optimize`, what `from_graph_def` runs) on the self-contained GraphDef;
* its large constants are moved out (`compress_graph_def`, tf2onnx's own large-model step) so the
  TensorFlow import is of the structure only;
* the optimizers run in tf2onnx's order and loop (`optimize_graph`: repeat until none changes the graph)
  on the graph in place, the NodeProtos written once, by `make_model`; an optimizer that fails fails the
  conversion instead of being skipped silently.

This reads two non-public parts of tf2onnx (the optimizers' `_optimize` and the optimizer table),
pinned in pyproject.toml at tf2onnx 1.17.0 (unmaintained upstream: no change expected).
"""

from __future__ import annotations

import gc
import logging
from collections import ChainMap

from xcit_edge.errors import ConversionError, first_line
from xcit_edge.graph.weights import WeightBytes, empty_consts

log = logging.getLogger(__name__)

MIN_APART_BYTES = 1 << 16  # constants at least this large skip tf2onnx's copies in `make_model`
MAX_OPTIMIZER_ROUNDS = 20  # tf2onnx loops until nothing changes; a graph that never settles is a bug


def tf_to_onnx(graph, opset: int):
    """The PreparedGraph as an ONNX ModelProto (float32), I/O named `input` and `output` (unchecked: the
    caller checks the file it saves, `onnx.checker` reading it from disk)."""
    import tensorflow as tf
    from tf2onnx import tf_loader
    from tf2onnx.tf_utils import compress_graph_def
    from tf2onnx.tfonnx import process_tf_graph

    inputs, outputs = [graph.input_tensor], [graph.output_tensor]
    apart = graph.frozen.matmul_weights()
    with tf.device("/cpu:0"), tf.Graph().as_default():  # grappler's meta graph export needs graph mode
        optimized = tf_loader.tf_optimize(inputs, outputs, graph.frozen.materialized(apart))
    values = ChainMap(compress_graph_def(optimized), WeightBytes(graph.frozen.weights, apart))
    empty_consts(optimized, apart)
    with tf.Graph().as_default() as tf_graph:
        tf.import_graph_def(optimized, name="")
        del optimized
        g = process_tf_graph(tf_graph, continue_on_error=True, opset=opset, input_names=inputs,
                             output_names=outputs, const_node_values=values)
    del values, tf_graph
    gc.collect()
    log.debug("tf2onnx: optimizing")
    _optimize(g)
    log.debug("tf2onnx: making the model")
    model = _make_model(g)
    del g
    gc.collect()
    _rename_io(model, graph.input_tensor, graph.output_tensor)
    model.producer_name = "xcit-edge (tf2onnx)"
    return model


def _make_model(g):
    """tf2onnx's `make_model` with the large constants set aside: it writes every node's attributes into
    its NodeProto, copies them into initializers and the graph into the model (three copies of the
    weights, kept by upb's arenas: +1.2 GB on xcit_small_12). Each large Const's value is replaced by an
    empty stub first and moved into its initializer after, one tensor at a time."""
    import onnx
    from onnx import helper

    apart = {}
    for node in g.get_nodes():
        value = node.get_attr("value") if node.is_const() else None
        if value is not None and value.t.ByteSize() >= MIN_APART_BYTES:
            apart[node.output[0]] = value
            node.set_attr_onnx(helper.make_attribute("value", onnx.TensorProto(data_type=value.t.data_type, dims=[0])))
    model = g.make_model("xcit-edge")
    for init in model.graph.initializer:
        if (value := apart.pop(init.name, None)) is not None:
            name = init.name
            init.CopyFrom(value.t)
            init.name = name
    if apart:
        raise ConversionError(f"tf2onnx left {len(apart)} constants out of the model (first: {next(iter(apart))})")
    return model


def _optimize(g) -> None:
    """tf2onnx's `optimizer.optimize_graph`, without its deep copies and per-optimizer proto write-backs."""
    from tf2onnx import optimizer

    before = g.dump_node_statistics()
    for round_ in range(MAX_OPTIMIZER_ROUNDS):
        changed = False
        for name, factory in optimizer._get_optimizers().items():
            opt = factory()
            opt.opt_iteration = round_
            try:
                g = opt._optimize(g)
            except Exception as e:  # tf2onnx's optimizers raise anything
                raise ConversionError(f"tf2onnx optimizer {name} failed: {first_line(e)}") from e
            g.delete_unused_nodes(g.outputs)
            changed = changed or opt.graph_been_opt
        if not changed:
            break
    else:
        raise ConversionError(f"tf2onnx's optimizers still changed the graph after {MAX_OPTIMIZER_ROUNDS} rounds")
    g.topological_sort(g.get_nodes())
    after = g.dump_node_statistics()
    log.debug("tf2onnx optimizers: %s", {k: after.get(k, 0) - before.get(k, 0) for k in before | after
                                         if after.get(k, 0) != before.get(k, 0)})


def _rename_io(model, old_in: str, old_out: str) -> None:
    """tf2onnx names I/O after TF tensors (`input:0`); artifacts expose `input` and `output`."""
    renames = {old_in: "input", old_out: "output"}
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.name = renames.get(vi.name, vi.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in list(model.graph.input) + list(model.graph.output):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param.startswith("unk__"):
                dim.dim_param = "batch"
