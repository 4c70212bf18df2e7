"""Find every cross-covariance attention (XCA) in a frozen graph and rewrite it into one fused form.

Detection works on what the graph computes, not on layer names or one op sequence, so the
native Keras export, onnx2tf graphs and onnx-tf style graphs (NCHW transposes, L2 norms
written as Sqrt(Sum(Square)) / Maximum / Div or Rsqrt / Mul) are all found:

1. Structure. A Softmax whose logits come (through constant scales, transposes and
   identities) from a matmul G, and whose probabilities feed a second matmul M. G's two
   operands each lead back, through layout ops and an L2 normalization (a Div or Mul whose
   other operand is computed from the same tensor by a square root of a reduction), to one
   tensor X; M's other operand leads back to the same X through layout ops only. X is the
   qkv projection, whatever layout the exporter gave it. From M, single-consumer layout
   ops lead down to Z, the tensor that enters the output projection.
2. Semantics. The graph is run once on a seeded probe input; the official XCA computed in
   numpy from the probed X (trying each axis of X and Z that could be the channel axis)
   must reproduce the probed Z. Only then is the block rewritten; a block that does not
   verify is left alone and reported, never guessed at.

The fused form (d = D/h, token-major q, k, v of shape (B, h, N, d)):

    G = qᵀk                                  BatchMatMul(adj_x): no transposed copy of q
    A = softmax(G · (τ_h / max(‖q‖, ε)) · (1 / max(‖k‖, ε))ᵀ)   norms over the N tokens
    out = v·Aᵀ                               BatchMatMul(adj_y), token-major again

which equals the official `normalize(q) @ normalize(k)ᵀ · τ` (each norm clamped at ε = 1e-12
like `F.normalize`) without normalizing the two (h, N, d) tensors: the per-channel scales
act on the small d×d logits. The rewrite happens here, once, on the TensorFlow graph; every
backend converts the rewritten graph. All nodes of block i are named `xcit_edge/xca_i/...`,
which is how the backends find (and count) the fused blocks in their artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from xcit_edge.graph.index import GraphIndex, base_name, data_inputs
from xcit_edge.graph.run import run_graph
from xcit_edge.graph.weights import as_frozen, like
from xcit_edge.graph.xca_names import PREFIX
from xcit_edge.metrics import rel_max_err

log = logging.getLogger(__name__)

NORM_EPS = 1e-12
_LAYOUT = {"Identity", "Snapshot", "Transpose", "Reshape", "StridedSlice", "Squeeze", "ExpandDims", "Slice",
           "Unpack", "Split", "SplitV", "GatherV2"}
_MATMUL = {"BatchMatMulV2", "BatchMatMulV3", "BatchMatMul", "MatMul"}
_ROOTS = {"Sqrt", "Rsqrt", "EuclideanNorm"}
_VERIFY_RTOL = 1e-4


@dataclass
class _Site:
    """One XCA found structurally, with what the probe needs to verify it."""

    softmax: str
    gram: str
    x: str | None = None  # the qkv tensor (node name)
    z: str | None = None  # the tensor entering the output projection (node name)
    tau: np.ndarray | None = None
    reason: str = ""
    stop: str = ""  # where the walk down to z stopped, and why


@dataclass
class FusionReport:
    """What the pass found and did: `found` structural XCAs, `fused` of them rewritten."""

    found: int = 0
    fused: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # softmax node -> why it was not fused
    max_rel_err: float = 0.0  # whole-graph output, fused vs original, on the probe input


def _layout_source(node) -> str:
    """The data operand of a layout op (Split carries its axis first)."""
    return base_name(node.input[1] if node.op == "Split" else node.input[0])


def _ancestors(g: GraphIndex, name: str, limit: int) -> set[str]:
    seen, frontier = set(), [name]
    for _ in range(limit):
        nxt = []
        for n in frontier:
            node = g.nodes.get(n)
            if node is None or n in seen:
                continue
            seen.add(n)
            nxt.extend(data_inputs(node))
        frontier = nxt
    return seen


def _normalized_source(g: GraphIndex, node) -> str | None:
    """For `x / f(x)` or `x * f(x)` with a root of a reduction in f: the name of x."""
    if node.op not in ("RealDiv", "Mul", "Div"):
        return None
    a, b = data_inputs(node)[:2]
    for data, scale in ((a, b), (b, a)) if node.op == "Mul" else ((a, b),):
        anc = _ancestors(g, scale, 8)
        if data in anc and any(g.nodes[n].op in _ROOTS for n in anc if n in g.nodes):
            return data
    return None


def _climb(g: GraphIndex, name: str, through_norm: bool) -> tuple[str | None, bool]:
    """Walk up from `name` through layout ops (and one L2 normalization if allowed) to the first
    other op: returns its name and whether a normalization was passed."""
    normed = False
    for _ in range(32):
        node = g.nodes.get(name)
        if node is None:
            return None, normed
        if node.op in _LAYOUT:
            name = _layout_source(node)
            continue
        src = _normalized_source(g, node) if through_norm and not normed else None
        if src is None:
            return name, normed
        name, normed = src, True
    return None, normed


def _logits_source(g: GraphIndex, softmax) -> tuple[str | None, np.ndarray]:
    """From the softmax input up through constant scales and layout ops to the Gram matmul."""
    scale = np.ones(1, np.float64)
    name = base_name(softmax.input[0])
    for _ in range(8):
        node = g.nodes.get(name)
        if node is None:
            return None, scale
        if node.op in _MATMUL:
            return name, scale
        if node.op in ("Identity", "Snapshot", "Transpose"):
            name = base_name(node.input[0])
            continue
        if node.op in ("Mul", "RealDiv", "Div"):
            a, b = data_inputs(node)[:2]
            ca, cb = g.const_array(a), g.const_array(b)
            if cb is not None:
                scale = scale * (cb.astype(np.float64).reshape(-1) if node.op == "Mul" else 1.0 / cb.reshape(-1))
                name = a
                continue
            if ca is not None and node.op == "Mul":
                scale, name = scale * ca.astype(np.float64).reshape(-1), b
                continue
        return None, scale
    return None, scale


def _descend(g: GraphIndex, name: str) -> tuple[str, str]:
    """From the attention-apply matmul down through single-consumer layout ops to Z; also says what
    stopped the walk there (for the log, when Z then fails to verify)."""
    for _ in range(16):
        cons = g.consumers.get(name, [])
        if len(cons) != 1 or cons[0].op not in ("Identity", "Transpose", "Reshape", "Squeeze", "ExpandDims"):
            kinds = ", ".join(f"{c.op} {c.name}" for c in cons[:3])
            return name, f"stopped at {name}: consumers {kinds or 'none'}"
        name = cons[0].name
    return name, f"stopped at {name}: 16 layout ops"


def _find_sites(g: GraphIndex) -> list[_Site]:
    sites = []
    for node in g.nodes.values():
        if node.op != "Softmax":
            continue
        gram, tau = _logits_source(g, node)
        applies = [c for c in g.consumers.get(node.name, []) if c.op in _MATMUL]
        if gram is None or len(applies) != 1:
            continue  # e.g. class attention: its logits are a reduction, not a Gram matmul
        tops = [_climb(g, i, through_norm=True) for i in data_inputs(g.nodes[gram])[:2]]
        if not all(normed for _, normed in tops):
            continue  # a softmax between two matmuls, but no L2-normalized operands: not XCA
        site = _Site(node.name, gram, tau=tau)
        v_in = [i for i in data_inputs(applies[0]) if i != node.name]
        v_top, _ = _climb(g, v_in[0], through_norm=False) if len(v_in) == 1 else (None, False)
        if len({tops[0][0], tops[1][0], v_top}) != 1 or v_top is None:
            site.reason = "q, k and v do not come from one qkv tensor"
            site.stop = f"they reach {tops[0][0]}, {tops[1][0]}, {v_top}"
        else:
            site.x, (site.z, site.stop) = v_top, _descend(g, applies[0].name)
        sites.append(site)
    order = {name: i for i, name in enumerate(g.nodes)}  # GraphDef order: block 0 first
    return sorted(sites, key=lambda s: order[s.softmax])


def reference_xca(q: np.ndarray, k: np.ndarray, v: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """The official XCA on token-major (B, h, N, d) tensors, in float64: (B, N, h*d)."""
    q, k, v = (t.astype(np.float64) for t in (q, k, v))
    qn = q / np.maximum(np.linalg.norm(q, axis=2, keepdims=True), NORM_EPS)
    kn = k / np.maximum(np.linalg.norm(k, axis=2, keepdims=True), NORM_EPS)
    logits = np.einsum("bhnd,bhne->bhde", qn, kn) * tau.reshape(1, -1, 1, 1)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = np.einsum("bhde,bhne->bhnd", attn, v)
    b, h, n, d = out.shape
    return out.transpose(0, 2, 1, 3).reshape(b, n, h * d)


@dataclass
class _Layout:
    """How X and Z are laid out: which axis holds channels (the rest flatten to (B, N))."""

    heads: int
    dim_head: int
    tokens: int
    x_shape: tuple[int, ...]
    x_axis: int
    z_shape: tuple[int, ...]
    z_axis: int


def _channels_last(a: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(a, axis, -1)


def _solve_layout(site: _Site, batch: int, x: np.ndarray, gram: np.ndarray, z: np.ndarray) -> _Layout | None:
    """The channel axes of X and Z under which the official XCA of X reproduces Z."""
    if gram.ndim < 2 or gram.shape[-1] != gram.shape[-2]:
        return None
    d = gram.shape[-1]
    heads = site.tau.size if site.tau.size > 1 else gram.size // (d * d * batch)
    width = heads * d
    if heads < 1 or x.size % (3 * width * batch) or z.size * 3 != x.size:
        return None
    tokens = x.size // (3 * width * batch)
    tau = site.tau if site.tau.size == heads else np.full(heads, site.tau.reshape(-1)[0])
    for xa in [i for i, s in enumerate(x.shape) if s == 3 * width]:
        qkv = _channels_last(x, xa).reshape(batch, tokens, 3, heads, d).transpose(2, 0, 3, 1, 4)
        want = reference_xca(qkv[0], qkv[1], qkv[2], tau)
        for za in [i for i, s in enumerate(z.shape) if s == width]:
            if rel_max_err(_channels_last(z, za).reshape(want.shape), want) <= _VERIFY_RTOL:
                site.tau = tau
                return _Layout(heads, d, tokens, x.shape, xa, z.shape, za)
    return None


class _Emitter:
    """Appends float32 nodes named `prefix/...` to a GraphDef."""

    def __init__(self, graph_def, prefix: str, device: str):
        from tensorflow.core.framework import types_pb2

        self.gd, self.prefix, self.device = graph_def, prefix, device
        self.f32, self.i32 = types_pb2.DT_FLOAT, types_pb2.DT_INT32

    def const(self, name: str, value) -> str:
        from tensorflow.python.framework import tensor_util

        arr = np.asarray(value)
        arr = arr.astype(np.int32 if arr.dtype.kind in "iu" else np.float32)
        node = self.gd.node.add(name=f"{self.prefix}/{name}", op="Const")
        node.attr["dtype"].type = self.i32 if arr.dtype == np.int32 else self.f32
        node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(arr))
        return node.name

    def op(self, name: str, op: str, inputs: list[str], **attrs) -> str:
        node = self.gd.node.add(name=f"{self.prefix}/{name}", op=op, input=inputs, device=self.device)
        node.attr["T"].type = self.f32
        for key, value in attrs.items():
            if isinstance(value, bool):
                node.attr[key].b = value
            elif key.startswith("T"):  # Tperm, Tshape, Tidx: dtypes
                node.attr[key].type = value
            else:
                node.attr[key].i = value
        return node.name

    def transpose(self, name: str, x: str, perm) -> str:
        if list(perm) == sorted(perm):
            return x
        return self.op(name, "Transpose", [x, self.const(f"{name}/perm", list(perm))], Tperm=self.i32)

    def reshape(self, name: str, x: str, shape) -> str:
        return self.op(name, "Reshape", [x, self.const(f"{name}/shape", list(shape))], Tshape=self.i32)


def _to_channels_last(rank: int, axis: int) -> list[int]:
    return [i for i in range(rank) if i != axis] + [axis]


def _emit(graph_def, index: int, site: _Site, lay: _Layout, device: str) -> str:
    """Append the fused block reading X; returns the name of the node that replaces Z."""
    e = _Emitter(graph_def, f"{PREFIX}{index}", device)
    h, d, n = lay.heads, lay.dim_head, lay.tokens
    x = e.transpose("x_channels_last", site.x, _to_channels_last(len(lay.x_shape), lay.x_axis))
    x = e.reshape("qkv", x, [-1, n, 3, h, d])
    x = e.transpose("qkv_token_major", x, [2, 0, 3, 1, 4])  # (3, B, h, N, d)
    # Split + Reshape, not Unpack: LiteRT's XNNPACK delegate has no UNPACK, which cut every block out of
    # the delegated graph (one partition per block; measured), and SPLIT it has
    split = e.op("qkv_split", "Split", [e.const("qkv_split/axis", np.int32(0)), x], num_split=3)
    q, k, v = (e.reshape(f"{name}_heads", f"{split}:{i}" if i else split, [-1, h, n, d])
               for i, name in enumerate(("q", "k", "v")))
    gram = e.op("gram", "BatchMatMulV2", [q, k], adj_x=True, adj_y=False)  # (B, h, d, d)
    eps = e.const("eps", np.float32(NORM_EPS))
    axis = e.const("token_axis", [2])
    norms = []
    for t, name in ((q, "q"), (k, "k")):
        sq = e.op(f"{name}_sq", "Mul", [t, t])
        ss = e.op(f"{name}_sumsq", "Sum", [sq, axis], Tidx=e.i32, keep_dims=True)  # (B, h, 1, d)
        norms.append(e.op(f"{name}_norm", "Maximum", [e.op(f"{name}_l2", "Sqrt", [ss]), eps]))
    q_col = e.reshape("q_norm_col", norms[0], [-1, h, d, 1])
    row_scale = e.op("q_scale", "RealDiv", [e.const("temperature", site.tau.reshape(h, 1, 1)), q_col])
    col_scale = e.op("k_scale", "RealDiv", [e.const("one", np.float32(1.0)), norms[1]])
    logits = e.op("logits", "Mul", [e.op("gram_rows", "Mul", [gram, row_scale]), col_scale])
    attn = e.op("attn", "Softmax", [logits])
    out = e.op("apply", "BatchMatMulV2", [v, attn], adj_x=False, adj_y=True)  # (B, h, N, d)
    out = e.transpose("token_major", out, [0, 2, 1, 3])
    zc = _to_channels_last(len(lay.z_shape), lay.z_axis)
    z_cl_shape = [lay.z_shape[i] for i in zc]
    out = e.reshape("merge_heads", out, [-1, *z_cl_shape[1:]])
    return e.transpose("out", out, list(np.argsort(zc)))


def _probe_input(shape: list[int | None], seed: int = 0) -> np.ndarray:
    batch = shape[0] if shape[0] else 2
    return np.random.default_rng(seed).standard_normal([batch, *shape[1:]]).astype(np.float32)


def _rewire(graph_def, old: str, new: str) -> None:
    for node in graph_def.node:
        if node.name.startswith(new.rsplit("/", 1)[0] + "/"):
            continue
        for i, inp in enumerate(node.input):
            if base_name(inp) == old and not inp.startswith("^"):
                node.input[i] = new
            elif inp == f"^{old}":
                node.input[i] = f"^{new}"


def count_structural(graph_def) -> int:
    """How many XCA blocks the graph has by structure (before or after fusion)."""
    return len(_find_sites(GraphIndex(graph_def)))


def fuse_xca(graph, input_tensor: str, input_shape: list[int | None], output_tensor: str):
    """Rewrite every verified XCA block of a frozen graph (a `Frozen` graph or a GraphDef); returns (the
    graph, of the kind given, FusionReport).

    The result is checked as a whole on the probe input: if its output drifts from the
    original's by more than 1e-5 (relative max error) nothing is rewritten.
    """
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.framework import graph_util

    frozen = as_frozen(graph)
    graph_def = frozen.graph_def
    g = GraphIndex(graph_def)
    sites = _find_sites(g)
    report = FusionReport(found=len(sites))
    ready = [s for s in sites if s.x]
    for s in sites:
        if not s.x:
            report.skipped[s.softmax] = s.reason
            log.info("XCA at %s not fused: %s (%s)", s.softmax, s.reason, s.stop)
    if not ready:
        return graph, report
    probe = _probe_input(input_shape)
    fetch = [f"{n}:0" for s in ready for n in (s.x, s.gram, s.z)] + [output_tensor]
    values = run_graph(frozen, input_tensor, probe, fetch)
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    fused = 0
    for i, s in enumerate(ready):
        lay = _solve_layout(s, len(probe), *values[3 * i:3 * i + 3])
        if lay is None:
            report.skipped[s.softmax] = "the official XCA of its qkv tensor does not reproduce its output"
            log.info("XCA at %s not fused: qkv %s, output %s (%s)", s.softmax, s.x, s.z, s.stop)
            continue
        new = _emit(out, fused, s, lay, g.nodes[s.z].device)
        _rewire(out, s.z, new)
        fused += 1
    if not fused:
        return graph, report
    out = graph_util.extract_sub_graph(out, [base_name(output_tensor)])
    out = frozen.with_graph(out)
    (after,) = run_graph(out, input_tensor, probe, [output_tensor])
    report.max_rel_err = rel_max_err(after, values[-1])
    if report.max_rel_err > 1e-5:
        log.warning("XCA fusion changed the output by %.2g (relative); graph left unfused", report.max_rel_err)
        report.skipped = {s.softmax: "whole-graph check failed" for s in sites}
        return graph, report
    report.fused = fused
    log.info("fused %d of %d XCA blocks (output rel. max error %.2g)", fused, len(sites), report.max_rel_err)
    return like(graph, out), report
