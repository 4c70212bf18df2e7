"""Fold the "shape math" of a frozen graph: what depends only on the input's shape becomes a constant.

torch.onnx writes the shape computations of a dynamic-batch model as ONNX ops, and onnx-tf turns each
into TensorFlow ops one to one: a Reshape with a 0 dim becomes `Reshape(t, f(Shape(t)))` (Shape ->
Gather -> SparseToDense -> Add), and XCiT's Fourier positional encoding is recomputed from
`Shape(input)` on every call. Those chains give the tensors of a pattern extra consumers (the XCA
matcher stops at a tensor that also feeds a Shape), and tf2onnx turns some of them into invalid ONNX
(onnx-tf's encoding gave an Unsqueeze whose axis is out of range for its input's rank: measured on
onnx-tf 1.10 output of timm's XCiT, tf2onnx 1.17).

A node is *shape-derived* when every path from the image input to it passes through Shape, Size or
Rank: its value is a function of the input's shape alone. The pass takes the shape-derived tensors
that feed real computation (the frontier), evaluates them at batch 1 and 2 (once for a fixed-batch
input) and replaces each that it can predict:

* the same value at every batch: a `Const`;
* the shape operand of a Reshape that differs at one position, in proportion to the batch: a `Const`
  with -1 there;
* another integer vector whose one position is a·batch + c (a StridedSlice's end, a reshape that has
  its -1 already): the constant parts concatenated around a·batch + c;
* a value tiled along axis 0 with the batch: `Tile(Const(value at batch 1), [batch, 1, ...])`.

Each prediction is checked at batch 3 before it is used; what cannot be predicted stays as it is
(logged with the node's name). The dead shape math is then pruned.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from xcit_edge.graph.index import base_name
from xcit_edge.graph.weights import as_frozen, is_weight, like

log = logging.getLogger(__name__)

SHAPE_OPS = {"Shape", "Size", "Rank", "ShapeN"}
PREFIX = "xcit_edge/shape_fold/"
_BATCHES = (1, 2, 3)


@dataclass
class FoldReport:
    """What was folded: tensors replaced by a constant, a -1 reshape, or a batch tile; left alone."""

    const: int = 0
    reshape: int = 0
    linear: int = 0
    tiled: int = 0
    left: list[str] = field(default_factory=list)

    @property
    def folded(self) -> int:
        return self.const + self.reshape + self.linear + self.tiled


def _tensor(name: str) -> str:
    """`node` and `node:0` name the same tensor: one spelling."""
    return name if ":" in name else f"{name}:0"


def topological(graph_def) -> list:
    """The nodes in an order where every data and control input comes first (Kahn's algorithm;
    no recursion, so a deep graph cannot hit Python's recursion limit)."""
    nodes = {n.name: n for n in graph_def.node}
    pending = {n.name: {base_name(i) for i in n.input if base_name(i) in nodes} for n in graph_def.node}
    users: dict[str, list[str]] = {}
    for name, deps in pending.items():
        for d in deps:
            users.setdefault(d, []).append(name)
    ready = deque(name for name, deps in pending.items() if not deps)
    order = []
    while ready:
        name = ready.popleft()
        order.append(nodes[name])
        for u in users.get(name, []):
            pending[u].discard(name)
            if not pending[u]:
                ready.append(u)
    return order


def classify(graph_def, input_node: str) -> dict[str, str]:
    """Each node's kind: "value" (reads the input's values), "shape" (only its shape), "const"."""
    kind: dict[str, str] = {}
    for node in topological(graph_def):
        data = [kind.get(base_name(i), "value") for i in node.input if not i.startswith("^")]
        if node.name == input_node or (not data and node.op != "Const" and not is_weight(node)):
            kind[node.name] = "value"  # the input, or a source we know nothing of (placeholders, random ops)
        elif node.op == "Const" or is_weight(node):
            kind[node.name] = "const"
        elif node.op in SHAPE_OPS:
            kind[node.name] = "const" if all(k == "const" for k in data) else "shape"
        elif "value" in data:
            kind[node.name] = "value"
        else:
            kind[node.name] = "shape" if "shape" in data else "const"
    return kind


def _frontier(graph_def, kind: dict[str, str]) -> dict[str, list]:
    """Shape-derived tensors read by value nodes -> the (node, input index) pairs that read them."""
    nodes = {n.name: n for n in graph_def.node}
    frontier: dict[str, list] = {}
    for node in graph_def.node:
        if kind.get(node.name) != "value":
            continue
        for idx, inp in enumerate(node.input):
            src = base_name(inp)
            if not inp.startswith("^") and kind.get(src) == "shape" and nodes[src].op != "Const":
                frontier.setdefault(_tensor(inp), []).append((node, idx))
    return frontier


def _linear_position(v1: np.ndarray, v2: np.ndarray, v3: np.ndarray, batches) -> tuple[int, int, int] | None:
    """For an integer vector whose one position is a*batch + c (the rest fixed): (position, a, c)."""
    if not (v1.ndim == 1 and v1.shape == v2.shape == v3.shape and v1.dtype.kind in "iu"):
        return None
    diff = np.flatnonzero(v1 != v2)
    if diff.size != 1 or not np.array_equal(np.delete(v1, diff[0]), np.delete(v3, diff[0])):
        return None
    at = int(diff[0])
    b1, b2, b3 = batches
    a = (int(v2[at]) - int(v1[at])) // (b2 - b1)
    c = int(v1[at]) - a * b1
    return (at, a, c) if a and int(v2[at]) == a * b2 + c and int(v3[at]) == a * b3 + c else None


def _predict(values: list[np.ndarray], readers: list, batches: tuple[int, ...]):
    """How the tensor depends on the batch, from its values at the first two batches: ("const", v),
    ("reshape", v with -1), ("linear", (v, position, a, c)), ("tile", v at batch 1) or None; checked
    against the third batch."""
    v1 = values[0]
    if len(values) == 1:
        return "const", v1
    v2, v3 = values[1], values[2]
    b1, b2, b3 = batches
    if v1.shape == v2.shape == v3.shape and np.array_equal(v1, v2) and np.array_equal(v1, v3):
        return "const", v1
    if (lin := _linear_position(v1, v2, v3, batches)) is not None:
        at, a, c = lin
        if all(n.op == "Reshape" and i == 1 for n, i in readers) and -1 not in v1 and c == 0:
            folded = v1.copy()
            folded[at] = -1  # a static shape everywhere but the batch: what converters fold best
            return "reshape", folded
        return "linear", (v1, at, a, c)
    if v1.ndim >= 1 and v1.shape[0] == b1 == 1:
        if np.array_equal(v2, np.repeat(v1, b2, axis=0)) and np.array_equal(v3, np.repeat(v1, b3, axis=0)):
            return "tile", v1
    return None


class _Writer:
    """Appends the replacement nodes to a GraphDef."""

    def __init__(self, graph_def, input_node: str):
        from tensorflow.core.framework import types_pb2

        self.gd, self.input_node, self.i32 = graph_def, input_node, types_pb2.DT_INT32
        self._batch: str | None = None

    def const(self, name: str, value: np.ndarray) -> str:
        from tensorflow.python.framework import dtypes, tensor_util

        node = self.gd.node.add(name=PREFIX + name, op="Const")
        node.attr["dtype"].type = dtypes.as_dtype(value.dtype).as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))
        return node.name

    def batch(self) -> str:
        """`Shape(input)[0:1]` as int32, made once."""
        if self._batch is None:
            shape = self.gd.node.add(name=PREFIX + "input_shape", op="Shape", input=[self.input_node])
            shape.attr["T"].type = 1  # DT_FLOAT
            shape.attr["out_type"].type = self.i32
            sl = self.gd.node.add(name=PREFIX + "batch", op="StridedSlice",
                                  input=[shape.name, self.const("b0", np.array([0], np.int32)),
                                         self.const("b1", np.array([1], np.int32)),
                                         self.const("b2", np.array([1], np.int32))])
            sl.attr["T"].type = self.i32
            sl.attr["Index"].type = self.i32
            for key in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask"):
                sl.attr[key].i = 0
            self._batch = sl.name
        return self._batch

    def linear(self, name: str, value: np.ndarray, at: int, a: int, c: int) -> str:
        """`value` with position `at` computed as a*batch + c, in `value`'s dtype."""
        from tensorflow.python.framework import dtypes

        dt = dtypes.as_dtype(value.dtype).as_datatype_enum
        batch = self.gd.node.add(name=f"{PREFIX}{name}/batch", op="Cast", input=[self.batch()])
        batch.attr["SrcT"].type, batch.attr["DstT"].type = self.i32, dt
        batch.attr["Truncate"].b = False
        scaled = self.gd.node.add(name=f"{PREFIX}{name}/scaled", op="Mul",
                                  input=[batch.name, self.const(f"{name}/a", np.array([a], value.dtype))])
        moved = self.gd.node.add(name=f"{PREFIX}{name}/moved", op="AddV2",
                                 input=[scaled.name, self.const(f"{name}/c", np.array([c], value.dtype))])
        for n in (scaled, moved):
            n.attr["T"].type = dt
        parts = [self.const(f"{name}/head", value[:at]), moved.name, self.const(f"{name}/tail", value[at + 1:])]
        node = self.gd.node.add(name=f"{PREFIX}{name}", op="ConcatV2",
                                input=[*parts, self.const(f"{name}/axis", np.array(0, np.int32))])
        node.attr["N"].i = 3
        node.attr["T"].type = dt
        node.attr["Tidx"].type = self.i32
        return node.name

    def tile(self, name: str, value: np.ndarray) -> str:
        from tensorflow.python.framework import dtypes

        ones = self.const(f"{name}/ones", np.ones(value.ndim - 1, np.int32))
        mult = self.gd.node.add(name=f"{PREFIX}{name}/multiples", op="ConcatV2",
                                input=[self.batch(), ones, self.const(f"{name}/axis", np.array(0, np.int32))])
        mult.attr["N"].i = 2
        mult.attr["T"].type = self.i32
        mult.attr["Tidx"].type = self.i32
        node = self.gd.node.add(name=f"{PREFIX}{name}", op="Tile", input=[self.const(f"{name}/value", value),
                                                                          mult.name])
        node.attr["T"].type = dtypes.as_dtype(value.dtype).as_datatype_enum
        node.attr["Tmultiples"].type = self.i32
        return node.name


def _input_dtype(graph_def, input_node: str):
    from tensorflow.python.framework import dtypes

    node = next(n for n in graph_def.node if n.name == input_node)
    return dtypes.as_dtype(node.attr["dtype"].type).as_numpy_dtype if "dtype" in node.attr else np.float32


def _known_shapes(graph_def, input_tensor: str, shape: list[int], dtype) -> dict[str, np.ndarray]:
    """The values of the Shape, Size and Rank ops whose operand TensorFlow's shape inference knows at this
    input shape (the structure imported with the input fixed; weights are placeholders with their shapes).
    Fed to the run, they cut the shape math off the model: evaluating it costs no forward pass (it cost six,
    at batches 1 to 3, 59 s of a 24-block model at 384 px with 8 px patches)."""
    from xcit_edge.util.tfimport import exact_tensorflow

    tf = exact_tensorflow()
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(dtype, shape, name="xcit_edge_shape_fold_input")
        tf.compat.v1.import_graph_def(graph_def, input_map={input_tensor: x}, name="")
    known = {}
    for op in g.get_operations():
        if op.type not in ("Shape", "Size", "Rank") or not op.inputs[0].shape.is_fully_defined():
            continue
        dims = op.inputs[0].shape.as_list()
        value = {"Shape": dims, "Size": int(np.prod(dims)), "Rank": len(dims)}[op.type]
        known[op.outputs[0].name] = np.array(value, op.outputs[0].dtype.as_numpy_dtype)
    return known


def fold_shape_math(graph, input_tensor: str, input_shape: list[int | None], keep: list[str]):
    """Replace the predictable shape-derived tensors of `graph` (a `Frozen` graph or a GraphDef); returns
    (the graph, of the kind given, FoldReport)."""
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.framework import graph_util

    from xcit_edge.graph.run import GraphSession

    frozen = as_frozen(graph)
    graph_def = frozen.graph_def
    input_node = base_name(input_tensor)
    frontier = _frontier(graph_def, classify(graph_def, input_node))
    report = FoldReport()
    if not frontier:
        return graph, report
    batches = _BATCHES if input_shape[0] is None else (input_shape[0],)
    names = sorted(frontier)
    dtype = _input_dtype(graph_def, input_node)
    with GraphSession(frozen) as run:
        runs = []
        for b in batches:
            shape = [b, *input_shape[1:]]
            runs.append(run(names, {input_tensor: np.zeros(shape, dtype),
                                    **_known_shapes(graph_def, input_tensor, shape, dtype)}))
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    by_name = {n.name: n for n in out.node}
    writer = _Writer(out, input_node)
    for k, tensor in enumerate(names):
        readers = [(by_name[n.name], i) for n, i in frontier[tensor]]
        guess = _predict([np.asarray(r[k]) for r in runs], readers, batches)
        if guess is None:
            report.left.append(tensor)
            log.debug("shape math at %s depends on the batch in a way not folded; left as it is", tensor)
            continue
        how, value = guess
        label = tensor.replace(":", "_")
        if how == "tile":
            new = writer.tile(label, value)
        elif how == "linear":
            new = writer.linear(label, *value)
        else:
            new = writer.const(label, value)
        field_name = {"const": "const", "reshape": "reshape", "linear": "linear", "tile": "tiled"}[how]
        setattr(report, field_name, getattr(report, field_name) + 1)
        for node, idx in readers:
            node.input[idx] = new
    if report.folded:
        out = graph_util.extract_sub_graph(out, keep)
        log.info("folded %d shape-derived tensors (%d constant, %d reshape with -1, %d linear in the batch, "
                 "%d batch tiles)", report.folded, report.const, report.reshape, report.linear, report.tiled)
    if report.left:
        log.info("left %d shape-derived tensors unfolded (first: %s)", len(report.left), report.left[0])
    return (like(graph, frozen.with_graph(out)) if report.folded else graph), report
