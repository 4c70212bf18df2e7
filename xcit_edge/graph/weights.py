"""The frozen graph with its weights kept out of the GraphDef: structure and values apart.

Why: a GraphDef holds its constants inline, so every rewrite that copies it, every probe that imports it
and every converter that reads it copies the weights too: `graph.prepare` peaked at 33x the SavedModel's
bytes on xcit_small_12 when the graph was frozen with `convert_variables_to_constants_v2` and rewritten as
a whole (benchmarks/prepare_memory.py). Here a `Frozen` graph is

* `graph_def`: the structure, in which every constant of `MIN_WEIGHT_BYTES` or more is a `Placeholder`
  node marked with the attribute `WEIGHT_ATTR` (an underscore attribute: TensorFlow's importer accepts
  it, no op reads it), its dtype and shape those of the value;
* `weights`: the values, one numpy array per such node, held once.

Rewrites copy and edit only the structure (a few MB for the largest XCiT), probes feed the weights to a
session (`feeds`), and `materialized()` puts them back as `Const` nodes only where a self-contained
graph is needed (tf2onnx, the TFLite converter). Small constants (shape vectors, scalars, permutations,
the per-head temperature) stay inline because the rewrites read them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from xcit_edge.graph.index import base_name

log = logging.getLogger(__name__)

WEIGHT_ATTR = "_xcit_edge_weight"
MIN_WEIGHT_BYTES = 16 << 10


def is_weight(node) -> bool:
    """A node that stands for a weight held in `Frozen.weights`."""
    return node.op == "Placeholder" and WEIGHT_ATTR in node.attr


def weight_shape(node) -> list[int]:
    return [int(d.size) for d in node.attr["shape"].shape.dim]


@dataclass(frozen=True)
class Frozen:
    """A constant-only graph: structure (`graph_def`, weights as marked placeholders) and weight values."""

    graph_def: object
    weights: dict[str, np.ndarray]

    def with_graph(self, graph_def) -> Frozen:
        """The same weights under a rewritten structure (rewrites never change a weight's value)."""
        return Frozen(graph_def, self.weights)

    def feeds(self) -> dict[str, np.ndarray]:
        """Session feeds for every weight the structure still has (numpy arrays are fed without a copy)."""
        return {f"{n.name}:0": self.weights[n.name] for n in self.graph_def.node if is_weight(n)}

    def nbytes(self) -> int:
        return sum(self.weights[n.name].nbytes for n in self.graph_def.node if is_weight(n))

    def materialized(self, apart: Iterable[str] = ()):
        """A self-contained GraphDef, every weight a `Const` again (but those named in `apart`, left weight
        nodes): a copy of the weights, made only for a converter that needs one (drop it when done)."""
        from tensorflow.core.framework import graph_pb2

        apart = set(apart)
        out = graph_pb2.GraphDef()
        out.CopyFrom(self.graph_def)
        for node in out.node:
            if is_weight(node) and node.name not in apart:
                _make_const(node, self.weights[node.name])
        return out

    def matmul_weights(self) -> set[str]:
        """The weights only ever read as a MatMul's right-hand operand (through Identity nodes): nothing
        constant-folds them, so a converter's graph optimizer need not see their values (in XCiT: the
        qkv, projection and MLP matrices, nearly all of the bytes)."""
        readers: dict[str, list] = {}
        for n in self.graph_def.node:
            for i, inp in enumerate(n.input):
                if not inp.startswith("^"):  # a control edge reads no value
                    readers.setdefault(base_name(inp), []).append((n, i))

        def only_matmuls(name: str, depth: int = 0) -> bool:
            uses = readers.get(name, [])
            return bool(uses) and depth < 8 and all(
                (n.op == "MatMul" and i == 1) or (n.op == "Identity" and only_matmuls(n.name, depth + 1))
                for n, i in uses)

        return {n.name for n in self.graph_def.node if is_weight(n) and only_matmuls(n.name)}


def empty_consts(graph_def, names: Iterable[str]) -> None:
    """The weight nodes `names` of `graph_def` made `Const`s of their dtype and shape without content (in
    place): tf2onnx's large-model form (`compress_graph_def`), the contents passed beside it by name."""
    from tensorflow.python.framework import tensor_shape

    names = set(names)
    for node in graph_def.node:
        if node.name in names and node.op == "Placeholder":
            dtype, shape = node.attr["dtype"].type, weight_shape(node)
            _reset(node, "Const")
            node.attr["dtype"].type = dtype
            node.attr["value"].tensor.dtype = dtype
            node.attr["value"].tensor.tensor_shape.CopyFrom(tensor_shape.TensorShape(shape).as_proto())


class WeightBytes(Mapping):
    """Weights as bytes by node name, each made when asked for (tf2onnx reads its `const_node_values` one
    by one: never a second copy of all the weights at once)."""

    def __init__(self, weights: dict[str, np.ndarray], names: Iterable[str]):
        self._weights = weights
        self._names = set(names)

    def __getitem__(self, name: str) -> bytes:
        if name not in self._names:
            raise KeyError(name)
        return np.ascontiguousarray(self._weights[name]).tobytes()

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _reset(node, op: str) -> None:
    """`node` emptied to a bare `op` of the same name and device (what each conversion below starts from)."""
    name, device = node.name, node.device
    node.Clear()
    node.name, node.op, node.device = name, op, device


def _make_const(node, value: np.ndarray) -> None:
    from tensorflow.python.framework import dtypes, tensor_util

    _reset(node, "Const")
    node.attr["dtype"].type = dtypes.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))


def _make_weight(node, value: np.ndarray) -> None:
    from tensorflow.python.framework import dtypes, tensor_shape

    _reset(node, "Placeholder")
    node.attr["dtype"].type = dtypes.as_dtype(value.dtype).as_datatype_enum
    node.attr["shape"].shape.CopyFrom(tensor_shape.TensorShape(value.shape).as_proto())
    node.attr[WEIGHT_ATTR].b = True


def _hold(node, value: np.ndarray, weights: dict[str, np.ndarray], min_bytes: int) -> None:
    """`node` becomes the value: a marked placeholder (value in `weights`) when large, else a Const."""
    if value.nbytes >= min_bytes and value.dtype != object:
        weights[node.name] = value
        _make_weight(node, value)
    else:
        _make_const(node, value)


def strip_constants(graph_def, min_bytes: int = MIN_WEIGHT_BYTES) -> Frozen:
    """A self-contained GraphDef as a `Frozen` graph: its large top-level Consts moved out (in place)."""
    from tensorflow.python.framework import tensor_util

    weights: dict[str, np.ndarray] = {}
    for node in graph_def.node:
        if node.op == "Const" and node.attr["value"].tensor.ByteSize() >= min_bytes:
            value = tensor_util.MakeNdarray(node.attr["value"].tensor)
            if value.dtype != object:
                _hold(node, value, weights, min_bytes)
    return Frozen(graph_def, weights)


@dataclass(frozen=True)
class FrozenSignature:
    """A signature frozen: the graph, its image input tensor and its output tensors (flattened order)."""

    frozen: Frozen
    input_tensor: str
    output_tensors: list[str]


def freeze_signature(sig, min_bytes: int = MIN_WEIGHT_BYTES) -> FrozenSignature:
    """Freeze a SavedModel signature (a ConcreteFunction) without ever holding its weights in a GraphDef.

    The function is inlined by grappler as `convert_variables_to_constants_v2` does (its own
    `_FunctionConverterDataInEager`: one structure GraphDef plus each captured variable's value); each
    captured variable then becomes a weight node and each `ReadVariableOp` of it an `Identity`. A graph
    that reads a variable any other way (a function call left after inlining, a resource gather) takes
    the classic path (`convert_variables_to_constants_v2`, then `strip_constants`).
    """
    from tensorflow.python.framework import convert_to_constants as ctc

    n_inputs = len(sig.inputs) - len(sig.captured_inputs)
    input_tensor = sig.inputs[0].name
    outputs = [t.name for t in sig.outputs]
    if n_inputs != 1:
        raise ValueError(f"expected one input, the function has {n_inputs}")
    data = ctc._FunctionConverterDataInEager(func=sig, lower_control_flow=True, aggressive_inlining=False)
    graph_def = data.graph_def
    values = {name: np.asarray(td.numpy) for name, td in data.tensor_data.items()}
    del data
    frozen = _weights_for_captures(graph_def, values, min_bytes)
    if frozen is None:
        log.debug("variables read other than by ReadVariableOp: freezing with convert_variables_to_constants_v2")
        del values
        fn = ctc.convert_variables_to_constants_v2(sig)
        input_tensor, outputs = fn.inputs[0].name, [t.name for t in fn.outputs]
        frozen = strip_constants(fn.graph.as_graph_def(), min_bytes)
    else:
        more = strip_constants(frozen.graph_def, min_bytes)  # constants the source graph had inline
        frozen = Frozen(frozen.graph_def, {**frozen.weights, **more.weights})
    return FrozenSignature(frozen, input_tensor, outputs)


def _weights_for_captures(graph_def, values: dict[str, np.ndarray], min_bytes: int) -> Frozen | None:
    """Each captured placeholder of `values` made a weight (or a small Const), in place; None when a
    captured resource is read by anything but top-level ReadVariableOps (through the Identity nodes that
    inlined function arguments leave)."""
    from tensorflow.core.framework import types_pb2

    nodes = {n.name: n for n in graph_def.node}
    if any(name not in nodes or nodes[name].op != "Placeholder" for name in values):
        return None
    readers: dict[str, list] = {}
    for n in graph_def.node:
        for i in n.input:
            readers.setdefault(base_name(i), []).append(n)
    resources = {name for name in values if nodes[name].attr["dtype"].type == types_pb2.DT_RESOURCE}
    if graph_def.library.function and _library_reads(graph_def, resources):
        return None
    to_identity = []
    for name in resources:
        path = _reads_of(name, readers, nodes[name].attr["dtype"].type)
        if path is None:
            return None
        to_identity += [(n, values[name].dtype) for n in path]
    for node, dtype in to_identity:
        _read_to_identity(node, dtype)
    weights: dict[str, np.ndarray] = {}
    for name, value in values.items():
        _hold(nodes[name], value, weights, min_bytes)
    return Frozen(graph_def, weights)


def _reads_of(name: str, readers: dict[str, list], resource: int) -> list | None:
    """The Identity / ReadVariableOp nodes between a captured resource and its values, or None when it
    reaches anything else."""
    found, todo = [], [name]
    while todo:
        for r in readers.get(todo.pop(), []):
            if r.op == "ReadVariableOp":
                found.append(r)
            elif r.op == "Identity" and r.attr["T"].type == resource:
                found.append(r)
                todo.append(r.name)
            else:
                return None
    return found


def _library_reads(graph_def, names: Iterable[str]) -> bool:
    """Whether a function call in the top-level graph still passes one of `names` on."""
    names = set(names)
    called = {f.signature.name for f in graph_def.library.function}
    return any(n.op in called or n.op.endswith("PartitionedCall") for n in graph_def.node
               if names & {base_name(i) for i in n.input})


def _read_to_identity(node, dtype: np.dtype) -> None:
    from tensorflow.python.framework import dtypes

    inputs = list(node.input)
    _reset(node, "Identity")
    node.input.extend(inputs)
    node.attr["T"].type = dtypes.as_dtype(dtype).as_datatype_enum


def as_frozen(graph) -> Frozen:
    """A `Frozen` graph as it is, a self-contained GraphDef as one with no weights held apart."""
    return graph if isinstance(graph, Frozen) else Frozen(graph, {})


def like(given, result: Frozen):
    """`result` in the kind `given` was: a rewrite handed a plain GraphDef hands one back."""
    return result if isinstance(given, Frozen) else result.graph_def
