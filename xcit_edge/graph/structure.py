"""Which XCiT a graph is, read from its structure: stem strides, blocks, width, not a parameter count.

A foreign SavedModel (onnx-tf, onnx2tf) carries no record of its architecture. Guessing it from a
parameter count is fragile: the two nanos (p16 and p8) differ by 0.14 % of their parameters, and
exporters keep extra constants (onnx2tf keeps transposed copies of weights). What the graph shows
without running it:

* patch size: XCiT's convolutional stem halves the resolution with each of its 3x3 stride-2
  convolutions, 4 of them for p16 and 3 for p8 (the local patch interaction's depthwise convolutions
  have stride 1), so patch = 2 ** (number of stride-2 Conv2D ops);
* depth: each XCA block and each of the 2 class-attention blocks has one Softmax: depth = softmaxes - 2;
* width D: the length most weight vectors have (LayerNorm and LayerScale parameters, biases of the
  projections, the LPI BatchNorm), counted over every float tensor whose shape is a vector once unit
  dimensions are dropped (exporters write (D,), (1,1,D) or (D,1,1));
* heads, tokens: from the family (heads) and the input size (tokens = (size / patch) ** 2).

The (depth, width) pair names the family exactly (`zoo.FAMILIES`); the input size and the output width
(the class count, or D for a feature extractor) complete the name. Everything is read from NodeDefs and
shapes, so `inspect` can use it on an untrusted protobuf without loading it, and `prepare` on the frozen
graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from xcit_edge.graph.weights import is_weight, weight_shape
from xcit_edge.model.zoo import FAMILIES, FIXTURE, PATCH_SIZES

CLASS_ATTENTION_BLOCKS = 2
_FLOAT_DTYPES = (1, 2, 14, 19)  # DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF


@dataclass
class Structure:
    """What the graph shows; None where it shows nothing usable."""

    patch_size: int | None
    depth: int | None
    width: int | None
    heads: int | None
    tokens: int | None
    img_size: int | None
    out_dim: int | None
    weights: int  # float elements of every constant (more than one element) and variable
    variant: str | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"patch {self.patch_size}", f"depth {self.depth}", f"width {self.width}",
                 f"heads {self.heads}", f"{self.tokens} tokens"]
        return ", ".join(p for p in parts if "None" not in p)


def _strides(node) -> tuple[int, int] | None:
    s = list(node.attr["strides"].list.i)
    if len(s) != 4:
        return None
    fmt = node.attr["data_format"].s.decode() if node.attr["data_format"].s else "NHWC"
    return (s[2], s[3]) if fmt == "NCHW" else (s[1], s[2])


def _shape_of_const(node) -> list[int] | None:
    """The shape of a float constant: a Const, or a weight held apart (`graph.weights`)."""
    if node.op not in ("Const", "Placeholder") or node.attr["dtype"].type not in _FLOAT_DTYPES:
        return None
    if node.op == "Placeholder":
        return weight_shape(node) if is_weight(node) else None
    return [int(d.size) for d in node.attr["value"].tensor.tensor_shape.dim]


def _vector_length(shape: list[int]) -> int | None:
    dims = [d for d in shape if d != 1]
    return dims[0] if len(dims) == 1 and dims[0] > 8 else None


def structure_of(nodes: Iterable, variable_shapes: Iterable[list[int]], img_size: int | None,
                 out_dim: int | None) -> Structure:
    """Read the structure from `nodes` (NodeDefs of the serving path, functions expanded) and the
    shapes of the model's variables (empty for a frozen graph)."""
    stride2 = softmax = 0
    shapes: list[list[int]] = [list(s) for s in variable_shapes]
    for node in nodes:
        if node.op == "Conv2D" and _strides(node) == (2, 2):
            stride2 += 1
        elif node.op == "Softmax":
            softmax += 1
        elif (shape := _shape_of_const(node)) is not None:
            shapes.append(shape)
    weights = sum(int(np.prod(s)) for s in shapes if int(np.prod(s)) > 1)
    lengths = Counter(n for s in shapes if (n := _vector_length(s)))
    patch = 2 ** stride2 if stride2 else None
    depth = softmax - CLASS_ATTENTION_BLOCKS if softmax > CLASS_ATTENTION_BLOCKS else None
    width = lengths.most_common(1)[0][0] if lengths else None
    st = Structure(patch, depth, width, None, None, img_size, out_dim, weights)
    st.variant, st.reason = _name(st)
    return st


def _family(depth: int, width: int) -> tuple[str, int] | None:
    """The family (name, heads) with this depth and width, or the fixture's."""
    for fam, (dim, blocks, heads, _) in FAMILIES.items():
        if (blocks, dim) == (depth, width):
            return fam, heads
    if (FIXTURE.depth, FIXTURE.embed_dim) == (depth, width):
        return "fixture", FIXTURE.num_heads
    return None


def _name(st: Structure) -> tuple[str | None, str]:
    """The architecture name `zoo.get_config` takes for this structure, or None and why not."""
    if st.patch_size is None or st.depth is None or st.width is None:
        return None, "no XCiT stem, attention blocks or weight vectors found"
    fam = _family(st.depth, st.width)
    if fam is None:
        return None, f"no XCiT family has depth {st.depth} and width {st.width}"
    family, st.heads = fam
    if st.img_size:
        st.tokens = (st.img_size // st.patch_size) ** 2
    if family == "fixture":
        if st.patch_size != FIXTURE.patch_size:
            return None, f"the test fixture has patch {FIXTURE.patch_size}, the graph {st.patch_size}"
        classes = FIXTURE.num_classes
        base = FIXTURE.name
    else:
        if st.patch_size not in PATCH_SIZES:
            return None, f"patch size {st.patch_size} is none of XCiT's ({', '.join(map(str, PATCH_SIZES))})"
        if not st.img_size or st.img_size % st.patch_size:
            return None, f"input size {st.img_size} is not a multiple of patch {st.patch_size}"
        classes = 1000
        base = f"xcit_{family}_p{st.patch_size}_{st.img_size}"
    if st.out_dim == st.width:
        return base + "_fe", ""
    if st.out_dim in (None, classes):
        return base, ""
    return None, f"output width {st.out_dim} is neither {classes} classes nor the {st.width} features"


def _library(meta_graph) -> dict:
    """The SavedModel's functions by name."""
    return {f.signature.name: f for f in meta_graph.graph_def.library.function}


def serving_nodes(meta_graph, signature_key: str, limit: int = 5_000_000) -> list:
    """The NodeDefs a signature runs, with every function it calls expanded once per call site.

    Read from the protobuf only (nothing is loaded). A function called twice contributes its nodes
    twice, as its ops run twice; `limit` bounds the expansion of a hostile call graph.
    """
    library = _library(meta_graph)
    graph_nodes = {n.name: n for n in meta_graph.graph_def.node}
    sig = meta_graph.signature_def[signature_key]
    start = [graph_nodes[t.name.split(":")[0]] for t in sig.outputs.values() if t.name.split(":")[0] in graph_nodes]
    out, stack = [], [(n, True) for n in start]
    seen: set[str] = {n.name for n in start}
    while stack and len(out) < limit:
        node, top = stack.pop()
        out.append(node)
        for key in ("f", "then_branch", "else_branch", "body", "cond"):
            fn = library.get(node.attr[key].func.name) if key in node.attr else None
            if fn is not None:
                stack.extend((n, False) for n in fn.node_def)
        if top:  # walk the top-level graph upwards from the signature's outputs
            for i in node.input:
                name = i.lstrip("^").split(":")[0]
                if name in graph_nodes and name not in seen:
                    seen.add(name)
                    stack.append((graph_nodes[name], True))
    return out


def variable_shapes(meta_graph) -> list[list[int]]:
    """Shapes of every variable in the object graph (trainable or not: converters differ)."""
    return [[int(d.size) for d in n.variable.shape.dim] for n in meta_graph.object_graph_def.nodes
            if n.WhichOneof("kind") == "variable"]


_AXIS_KEEPING = {"Identity", "Snapshot", "Pad", "PadV2", "MirrorPad", "Sub", "Mul", "AddV2", "Add", "RealDiv",
                 "Maximum", "Minimum", "Cast"}


def input_layout(nodes: Iterable, input_node: str, library: dict | None = None, _depth: int = 0,
                 _axes: list[int] | None = None) -> str | None:
    """What each axis of the image input holds ("NHWC", "NCHW", "NWHC", ...), read from the path to the
    first convolution: the transposes on the way are composed and the convolution's data format names
    the axes it sees. None when no such path is found (then the input's shape decides).

    The TF Hub collection's recipe feeds `model(torch.transpose(x, 1, 3))`: its NHWC-looking input is
    really (N, W, H, C), which only the structure shows for a square image. `nodes` may be a GraphDef's
    or a FunctionDef's (whose inputs name the function's arguments and `node:output:i` tensors); with
    `library` (function name -> FunctionDef) the path is followed into the functions it calls.
    """
    from tensorflow.python.framework import tensor_util

    nodes = {n.name: n for n in nodes}
    consumers: dict[str, list] = {}
    for n in nodes.values():
        for i in n.input:
            if not i.startswith("^"):
                consumers.setdefault(i.split(":")[0], []).append(n)
    frontier = [(input_node, _axes or [0, 1, 2, 3])]  # axes[i]: which input axis position i of the tensor holds
    for _ in range(16):
        nxt = []
        for name, axes in frontier:
            for node in consumers.get(name, []):
                if node.op == "Conv2D" and node.input[0].split(":")[0] == name:
                    fmt = node.attr["data_format"].s.decode() or "NHWC"
                    return "".join(fmt[axes.index(j)] for j in range(4))
                if node.op == "Transpose" and node.input[0].split(":")[0] == name:
                    perm_node = nodes.get(node.input[1].split(":")[0])
                    if perm_node is None or perm_node.op != "Const":
                        continue
                    perm = [int(p) for p in tensor_util.MakeNdarray(perm_node.attr["value"].tensor).reshape(-1)]
                    if sorted(perm) == [0, 1, 2, 3]:
                        nxt.append((node.name, [axes[p] for p in perm]))
                elif node.op in _AXIS_KEEPING:
                    nxt.append((node.name, axes))
                elif (found := _into_call(node, name, axes, library, _depth)) is not None:
                    return found
        frontier = nxt
    return None


def _into_call(node, name: str, axes: list[int], library: dict | None, depth: int) -> str | None:
    """`input_layout` continued inside the function a call node runs, from the argument `name` feeds."""
    fn = library.get(node.attr["f"].func.name) if library and "f" in node.attr and depth < 8 else None
    if fn is None:
        return None
    data = [i.split(":")[0] for i in node.input if not i.startswith("^")]
    for k, src in enumerate(data):
        if src == name and k < len(fn.signature.input_arg):
            found = input_layout(fn.node_def, fn.signature.input_arg[k].name, library, depth + 1, axes)
            if found is not None:
                return found
    return None


def function_input_layout(meta_graph, signature_key: str) -> str | None:
    """`input_layout` read from the protobuf of a SavedModel: from the signature's image input through the
    functions it calls to the first convolution (nothing is loaded)."""
    sig = meta_graph.signature_def[signature_key]
    inputs = [t.name.split(":")[0] for t in sig.inputs.values()]
    return input_layout(meta_graph.graph_def.node, inputs[0], _library(meta_graph)) if len(inputs) == 1 else None
