"""Rewrites of a frozen GraphDef into the op vocabulary every backend understands.

GELU: each exporter writes the exact GELU its own way: Keras as `0.5·x·erfc(-x/√2)`,
onnx2tf / onnx-tf as `x/√2 -> Erf -> +1 -> ·x -> ·0.5` in some order. `Erfc` is no ONNX op
(tf2onnx passes it through and `onnx.checker` rejects the model), TFLite has no Erf or Erfc
builtin and only recognises one shape of the erf form as its GELU builtin (measured:
`(x·0.5)·(erf(x·(1/√2)) + 1)` converts, `((erf(x/√2)+1)·x)·0.5` fails with "tf.Erf is
neither a custom op nor a flex op"). So every GELU is found by what it computes, not by
its op sequence, and rewritten into that one canonical form:

    Mul(Mul(x, 0.5), AddV2(Erf(Mul(x, 0.70710677)), 1))

which TFLite fuses into GELU, tf2onnx maps to ONNX Erf, and OpenVINO reads directly.
Detection: from each Erf/Erfc node walk up through scalar Mul/RealDiv/Neg to the input x,
then down through elementwise consumers and transposes; the node whose value on test points
equals gelu(x) (evaluated here in numpy), in x's layout, is the GELU output. onnx2tf 2.x writes
15 of nano's 29 GELUs (stem and LPI) with a transpose pair between Erf and the +1 (measured,
onnx2tf 2.6.9): the layout is followed through them.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from xcit_edge.graph.index import GraphIndex, base_name

log = logging.getLogger(__name__)

_ELEMENTWISE = {"Mul", "AddV2", "Add", "Sub", "RealDiv", "Neg", "Erf", "Erfc"}
_POINTS = np.linspace(-4.0, 4.0, 33)
_ERF = np.vectorize(math.erf)
_GELU = 0.5 * _POINTS * (1.0 + _ERF(_POINTS / math.sqrt(2.0)))


def _scalar(node) -> float | None:
    """The value of a scalar (or single-element) float Const node, else None."""
    if node is None or node.op != "Const":
        return None
    from tensorflow.python.framework import tensor_util

    value = tensor_util.MakeNdarray(node.attr["value"].tensor)
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind == "f" else None


class _Graph(GraphIndex):
    """The graph index with what GELU detection adds: scalar constants, walking up to x, evaluation."""

    def scalar(self, node) -> float | None:
        """`_scalar` through Identity chains."""
        return _scalar(self.through_identities(node))

    def input_of(self, erf) -> str | None:
        """Walk up from an Erf/Erfc through scalar Mul/RealDiv/Neg to the tensor x."""
        cur = self.nodes.get(base_name(erf.input[0]))
        for _ in range(3):
            if cur is None:
                return None
            if cur.op == "Neg":
                cur = self.nodes.get(base_name(cur.input[0]))
                continue
            if cur.op in ("Mul", "RealDiv"):
                a, b = (self.nodes.get(base_name(i)) for i in cur.input)
                if self.scalar(b) is not None:
                    cur = a
                    continue
                if cur.op == "Mul" and self.scalar(a) is not None:
                    cur = b
                    continue
            return cur.name
        return None

    def perm(self, node) -> tuple[int, ...] | None:
        """A Transpose's constant permutation."""
        value = self.const_array(node.input[1]) if len(node.input) > 1 else None
        return None if value is None else tuple(int(v) for v in value.reshape(-1))

    def evaluate(self, name: str, x: str, memo: dict, depth: int = 0) -> tuple | None:
        """(value, axes) of node `name` with x := the test points, or None if it depends on anything else.

        Elementwise ops act on the points; a Transpose (onnx2tf puts layout transposes between the ops of
        a GELU) permutes positions, not values, so only its effect on the layout is tracked: `axes` is
        the composed permutation relative to x (None: x's own layout, or a scalar). Operands of a binary
        op must share a layout; the GELU's output must be in x's layout.
        """
        if name == x:
            return _POINTS, None
        if name in memo:
            return memo[name]
        node = self.nodes.get(name)
        result = None
        if node is not None and (c := self.scalar(node)) is not None:
            result = np.float64(c), None
        elif node is not None and node.op in ("Identity", "Snapshot") and depth < 12:
            result = self.evaluate(base_name(node.input[0]), x, memo, depth + 1)
        elif node is not None and node.op == "Transpose" and depth < 12 and (perm := self.perm(node)):
            inner = self.evaluate(base_name(node.input[0]), x, memo, depth + 1)
            if inner is not None and np.ndim(inner[0]):
                axes = inner[1] or tuple(range(len(perm)))
                if len(axes) == len(perm):
                    composed = tuple(axes[p] for p in perm)
                    result = inner[0], (None if composed == tuple(range(len(perm))) else composed)
        elif node is not None and node.op in _ELEMENTWISE and depth < 12:
            args = [self.evaluate(base_name(i), x, memo, depth + 1) for i in node.input if not i.startswith("^")]
            layouts = {a[1] for a in args if a is not None and np.ndim(a[0])}
            if all(a is not None for a in args) and len(layouts) <= 1:
                with np.errstate(all="ignore"):
                    result = _apply(node.op, [a[0] for a in args]), next(iter(layouts), None)
        memo[name] = result
        return result

    def gelu_output(self, erf, x: str):
        """The node downstream of `erf` whose value is gelu(x) in x's layout, if any (breadth-first, 6 levels)."""
        memo: dict = {}
        frontier = [erf]
        for _ in range(6):
            nxt = []
            for node in frontier:
                for cons in self.consumers.get(node.name, []):
                    if cons.op not in _ELEMENTWISE and cons.op != "Transpose":
                        continue
                    got = self.evaluate(cons.name, x, memo)
                    if got is None:
                        continue
                    val, axes = got
                    if axes is None and np.ndim(val) and np.allclose(val, _GELU, rtol=1e-5, atol=1e-6):
                        return cons
                    nxt.append(cons)
            frontier = nxt
        return None


def _apply(op: str, args: list) -> np.ndarray:
    if op == "Neg":
        return -args[0]
    if op == "Erf":
        return _ERF(args[0])
    if op == "Erfc":
        return 1.0 - _ERF(args[0])
    a, b = args
    return {"Mul": a * b, "AddV2": a + b, "Add": a + b, "Sub": a - b, "RealDiv": a / b}[op]


def _const(graph_def, name: str, value: float, dtype_enum: int):
    from tensorflow.python.framework import tensor_util
    from tensorflow.python.framework.dtypes import as_dtype

    node = graph_def.node.add(name=name, op="Const")
    node.attr["dtype"].type = dtype_enum
    node.attr["value"].tensor.CopyFrom(
        tensor_util.make_tensor_proto(np.array(value, dtype=as_dtype(dtype_enum).as_numpy_dtype)))
    return node


def _binary(graph_def, name: str, op: str, a: str, b: str, dtype_enum: int, device: str):
    node = graph_def.node.add(name=name, op=op, input=[a, b], device=device)
    node.attr["T"].type = dtype_enum
    return node


def _emit_gelu(graph_def, out_node, x: str, dtype_enum: int) -> None:
    """Turn `out_node` (same name, so consumers stay wired) into the canonical GELU."""
    p, dev = out_node.name, out_node.device
    _const(graph_def, f"{p}/gelu/half", 0.5, dtype_enum)
    _const(graph_def, f"{p}/gelu/rsqrt2", 1.0 / math.sqrt(2.0), dtype_enum)
    _const(graph_def, f"{p}/gelu/one", 1.0, dtype_enum)
    _binary(graph_def, f"{p}/gelu/xh", "Mul", x, f"{p}/gelu/half", dtype_enum, dev)
    _binary(graph_def, f"{p}/gelu/xs", "Mul", x, f"{p}/gelu/rsqrt2", dtype_enum, dev)
    erf = graph_def.node.add(name=f"{p}/gelu/erf", op="Erf", input=[f"{p}/gelu/xs"], device=dev)
    erf.attr["T"].type = dtype_enum
    _binary(graph_def, f"{p}/gelu/erf1", "AddV2", f"{p}/gelu/erf", f"{p}/gelu/one", dtype_enum, dev)
    out_node.op = "Mul"
    del out_node.input[:]
    out_node.input.extend([f"{p}/gelu/xh", f"{p}/gelu/erf1"])
    for key in list(out_node.attr):
        if key != "T":
            del out_node.attr[key]
    out_node.attr["T"].type = dtype_enum


def canonicalize_gelu(graph_def, keep: list[str]) -> tuple[object, int]:
    """Rewrite every GELU into the canonical form; `keep` are the node names to prune towards.

    Returns the new GraphDef and how many GELUs were rewritten. An Erf/Erfc left over that
    is no GELU stays as it is (and a backend without it will say so).
    """
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.framework import graph_util

    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    g = _Graph(out)
    sites = []
    for node in list(out.node):
        if node.op in ("Erf", "Erfc") and (x := g.input_of(node)) and (gelu := g.gelu_output(node, x)):
            sites.append((gelu, x, node.attr["T"].type))
    for gelu, x, dtype in sites:
        _emit_gelu(out, gelu, x, dtype)
    if sites:
        out = graph_util.extract_sub_graph(out, keep)
        log.info("canonicalized %d GELU activations", len(sites))
    return out, len(sites)


def op_counts(graph_def) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph_def.node:
        counts[node.op] = counts.get(node.op, 0) + 1
    for fn in graph_def.library.function:
        for node in fn.node_def:
            counts[node.op] = counts.get(node.op, 0) + 1
    return dict(sorted(counts.items()))
