"""ONNX graph rewrites that let ONNX Runtime run what tf2onnx wrote out op by op as single kernels.

tf2onnx writes a Keras LayerNorm as ~13 elementwise nodes (GlobalAveragePool mean, Neg, Sub,
Mul, GlobalAveragePool variance, Add ε, Sqrt, Reciprocal, three Mul, two Add), each a full pass
over the (B, N, D) tokens, and ONNX Runtime's LayerNorm fusion does not recognise that form
(its profiler put 35 % of nano's time in Mul and Add, against 11 % in timm's own export, where
the same LayerNorms run as `LayerNormalization`). GELU arrives as `erf(x · 0.70710677)` (the
form TFLite needs); ONNX Runtime fuses only `erf(x / 1.4142135)` into its Gelu kernel.

* `fuse_layernorm`: every LayerNorm over the last axis becomes one `LayerNormalization`
  (ONNX opset 17). Found by structure (a mean, the mean of the squared deviation from it, ε
  added) and confirmed by value: the model is run once on a seeded probe and the candidate
  output must equal numpy's LayerNorm of the probed input with the block's own γ and β
  constants, or γ = 1 / β = 0 where TensorFlow's optimizer folded a multiply by ones or an add of
  zeros away (a freshly initialized model). Anything that does not verify is left as it is.
* `gelu_div_form`: `Erf(Mul(x, 1/√2))` becomes `Erf(Div(x, √2))`, and a `+1` constant of shape
  (1, 1, 1, 1) a scalar (ONNX Runtime's GeluFusion takes only a scalar there).
* `fold_scales`: per-channel constant multiplications folded into the weights next to them.
  LayerScale (`gamma * x` after every attention, LPI and MLP branch) into the preceding MatMul and
  bias, or the preceding Conv when only its NHWC transpose and reshape stand between; the LPI's
  BatchNorm scale, which TensorFlow's optimizer multiplies into the GELU before tf2onnx sees it
  (`(x·0.5)·((erf(x/√2)+1)·s)`, a form no GELU fusion matches), moved out of the GELU and into the
  next Conv's weights (`conv(s·g + b) = conv_{w·s}(g + b/s)`, exact also at the zero-padded border).
  nano: 50 Mul nodes gone (the manifest's `rewrites`), and ONNX Runtime then fuses every GELU
  (tests/backends/test_onnx_rewrites.py checks it on the fixture).
* `l2_norm_form`: `Sqrt(ReduceSum(Mul(t, t)))` becomes `ReduceL2(t)` (XCA's q and k norms).
* `pad_into_conv`: an explicit zero `Pad` before a `Conv` (how onnx-tf writes padded convolutions)
  becomes the Conv's `pads`, so the LPI pattern above is found in onnx-tf graphs too.

`optimize` applies them all and checks the whole rewritten model against the original on the
probe (1e-5 relative max error), else returns the original.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from xcit_edge.backends.onnx.index import OnnxIndex
from xcit_edge.errors import SpecError
from xcit_edge.metrics import rel_max_err

log = logging.getLogger(__name__)

_MEANS = ("GlobalAveragePool", "ReduceMean")
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Neg", "Pow"}
_RTOL = 1e-5


def _layernorm_sites(ix: OnnxIndex) -> list[dict]:
    """Candidate LayerNorms: x, ε, and the elementwise region below the variance."""
    sites = []
    for m1 in ix.model.graph.node:
        if m1.op_type not in _MEANS:
            continue
        x, mean = m1.input[0], m1.output[0]
        d = ix.consumer(mean, "Sub", lambda n, x=x, mean=mean: list(n.input) == [x, mean])
        sq = d and (ix.consumer(d.output[0], "Mul", lambda n, t=d.output[0]: list(n.input) == [t, t])
                    or ix.consumer(d.output[0], "Pow"))
        m2 = sq and next((n for n in ix.consumers.get(sq.output[0], []) if n.op_type in _MEANS), None)
        add = m2 and ix.consumer(m2.output[0], "Add")
        eps = add is not None and ix.const(add, m2.output[0])
        if eps is None or eps is False or np.size(eps) != 1:
            continue
        region, frontier = [], [m1, add]
        while frontier:  # everything elementwise below the mean and the variance, a few levels deep
            nxt = []
            for n in frontier:
                for c in (c for o in n.output for c in ix.consumers.get(o, [])):
                    if c.op_type in _ELEMENTWISE and c not in region and len(region) < 24:
                        region.append(c)
                        nxt.append(c)
            frontier = nxt
        sites.append({"x": x, "eps": float(np.reshape(eps, -1)[0]), "region": region})
    return sites


def _probe(model, tensors: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Values of `tensors` on a seeded input (batch 2 when the batch is dynamic)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for t in dict.fromkeys(tensors):
        if t not in known:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 2 for d in inp.shape]
    rng = np.random.default_rng(seed)
    if inp.type == "tensor(uint8)":  # --bake-preprocessing: raw pixels
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {inp.name: x}), strict=True))


def _matches(x: np.ndarray, y: np.ndarray, eps: float, gamma: np.ndarray, beta: np.ndarray) -> bool:
    if y.shape != x.shape or gamma.shape != (x.shape[-1],) or beta.shape != (x.shape[-1],):
        return False
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    want = (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(-1, keepdims=True) + eps) * gamma + beta
    return rel_max_err(y, want) <= 1e-4


def _choose(ix: OnnxIndex, site: dict, values: dict) -> tuple[object, np.ndarray, np.ndarray] | None:
    """(output node, γ, β) of a verified LayerNorm, else None.

    γ and β are constants of the region, or absent: a LayerNorm whose γ is all ones or β all zeros (a
    freshly initialized model, command 1's nano) reaches tf2onnx with that multiply or add folded away by
    TensorFlow's optimizer, and is the same LayerNorm with γ = 1, β = 0.
    """
    x = values[site["x"]]
    width = x.shape[-1]
    consts = {i: ix.inits[i].reshape(-1) for n in site["region"] for i in n.input
              if i in ix.inits and ix.inits[i].size == width}
    gammas = [*consts.items(), ("", np.ones(width, np.float32))]
    betas = [*consts.items(), ("", np.zeros(width, np.float32))]
    for node in reversed(site["region"]):  # the furthest node that is the whole LayerNorm
        y = values.get(node.output[0])
        if y is None:
            continue
        for g, gamma in gammas:
            for b, beta in betas:
                if (not g or g != b) and _matches(x, y, site["eps"], gamma, beta):
                    return node, gamma, beta
    return None


def fuse_layernorm(model) -> tuple[object, int]:
    """Rewrite every verified LayerNorm into `LayerNormalization`; returns (model, how many)."""
    import onnx
    from onnx import numpy_helper

    ix = OnnxIndex(model)
    sites = _layernorm_sites(ix)
    if not sites:
        return model, 0
    values = _probe(model, [s["x"] for s in sites] + [n.output[0] for s in sites for n in s["region"]])
    replaced = 0
    for k, site in enumerate(sites):
        chosen = _choose(ix, site, values)
        if chosen is None:
            continue
        out, gamma, beta = chosen
        names = (f"xcit_edge/ln_{k}/gamma", f"xcit_edge/ln_{k}/beta")
        for name, value in zip(names, (gamma, beta), strict=True):
            model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        ln = onnx.helper.make_node("LayerNormalization", [site["x"], *names], [out.output[0]],
                                   name=f"xcit_edge/ln_{k}", axis=-1, epsilon=site["eps"])
        idx = list(model.graph.node).index(out)
        model.graph.node.remove(out)
        model.graph.node.insert(idx, ln)
        replaced += 1
    drop_unused(model)
    return model, replaced


def fold_tensordot(model) -> tuple[object, int]:
    """`Reshape(x, (-1, D)) -> MatMul(W) -> Reshape(back)` (Keras Dense on tokens, as TF's
    Tensordot writes it) becomes `MatMul(x, W)`: ONNX MatMul broadcasts over leading axes. The
    runtime shape arithmetic feeding the second Reshape (Shape, Gather, Cast, Concat: about
    300 tiny nodes in nano) goes with it. Each site is checked on the probe: the second
    Reshape's output must have x's leading axes."""
    ix = OnnxIndex(model)
    sites = []
    for mm in model.graph.node:
        r1 = ix.producer.get(mm.input[0]) if mm.op_type == "MatMul" else None
        after = ix.consumers.get(mm.output[0], []) if r1 is not None else []
        if r1 is None or r1.op_type != "Reshape" or mm.input[1] not in ix.inits or ix.inits[mm.input[1]].ndim != 2:
            continue
        if len(after) == 1 and after[0].op_type == "Reshape" and len(ix.consumers.get(r1.output[0], [])) == 1:
            sites.append((r1, mm, after[0]))
    if not sites:
        return model, 0
    values = _probe(model, [t for r1, _, r2 in sites for t in (r1.input[0], r2.output[0])])
    done = 0
    for r1, mm, r2 in sites:
        x, y = values[r1.input[0]], values[r2.output[0]]
        if x.ndim < 3 or y.shape != (*x.shape[:-1], ix.inits[mm.input[1]].shape[1]):
            continue
        mm.input[0] = r1.input[0]
        mm.output[0] = r2.output[0]
        model.graph.node.remove(r2)
        done += 1
    drop_unused(model)
    return model, done


def gelu_div_form(model) -> tuple[object, int]:
    """`Erf(Mul(x, 1/√2))` -> `Erf(Div(x, √2))`, and the `+1` after it a scalar: the form ONNX Runtime
    fuses into Gelu. Returns the number of Mul -> Div rewrites."""
    from onnx import numpy_helper

    ix = OnnxIndex(model)
    done = 0
    for k, erf in enumerate([n for n in model.graph.node if n.op_type == "Erf"]):
        add = _only_consumer(ix, erf.output[0])
        one = add is not None and add.op_type == "Add" and _scalar_one(ix, add)
        if one:  # (1, 1, 1, 1) after an NCHW tensor: the same values as a scalar
            add.input[:] = [f"{one}/scalar{k}" if i == one else i for i in add.input]
            model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), f"{one}/scalar{k}"))
        mul = ix.producer.get(erf.input[0])
        c = mul is not None and mul.op_type == "Mul" and ix.const(mul, "")
        if c is None or c is False or np.size(c) != 1 or abs(float(np.reshape(c, -1)[0]) - 2 ** -0.5) > 1e-6:
            continue
        if len(ix.consumers.get(mul.output[0], [])) != 1:
            continue
        x = next(i for i in mul.input if i not in ix.inits)
        name = f"{mul.name}/sqrt2"
        model.graph.initializer.append(numpy_helper.from_array(np.array(np.sqrt(2.0), np.float32), name))
        mul.op_type = "Div"
        mul.input[:] = [x, name]
        done += 1
    drop_unused(model)
    return model, done


def _scalar_one(ix: OnnxIndex, add) -> str | None:
    """The name of `add`'s constant input when it is 1.0 in a shape other than a scalar."""
    for name in add.input:
        c = ix.inits.get(name)
        if c is not None and c.size == 1 and c.ndim > 0 and float(c.reshape(-1)[0]) == 1.0:
            return name
    return None


def _per_channel(ix: OnnxIndex, node, channels: int | None = None, axis: int = -1) -> tuple[str, np.ndarray] | None:
    """(name, values) of `node`'s constant operand when it varies along `axis` only: the last axis of
    tokens (shape (C,) or (1, 1, C)), or axis 1 of an NCHW tensor (shape (1, C, 1, 1))."""
    for name in node.input:
        c = ix.inits.get(name)
        if c is None or c.size < 2 or (channels and c.size != channels) or (axis == 1 and c.ndim != 4):
            continue
        if c.shape[axis] == c.size:
            return name, c.reshape(-1).astype(np.float32)
    return None


def _only_consumer(ix: OnnxIndex, tensor: str):
    users = ix.consumers.get(tensor, [])
    return users[0] if len(users) == 1 else None


def _set_init(model, ix: OnnxIndex, name: str, value: np.ndarray) -> str:
    """A new initializer (the old one may be shared): returns its name."""
    from onnx import numpy_helper

    new = f"{name}/folded{len(model.graph.initializer)}"
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), new))
    ix.inits[new] = value
    return new


def _bypass(ix: OnnxIndex, node) -> None:
    """Consumers of `node`'s output read its data input instead (node is then unused; `drop_unused`
    removes it). The index follows, so later folds see the new consumers without a rebuild."""
    src = next(i for i in node.input if i not in ix.inits)
    users = ix.consumers.pop(node.output[0], [])
    for c in users:
        c.input[:] = [src if i == node.output[0] else i for i in c.input]
    ix.consumers.setdefault(src, []).extend(users)


def _layerscale_into_matmul(model, ix: OnnxIndex, mul) -> bool:
    """Mul(Add(MatMul(x, W), b), g) -> Add(MatMul(x, W·g), b·g)."""
    add = ix.producer.get(next((i for i in mul.input if i not in ix.inits), ""))
    mm = add is not None and add.op_type == "Add" and ix.producer.get(next((i for i in add.input if i not in ix.inits),
                                                                           ""))
    if not mm or mm.op_type != "MatMul" or mm.input[1] not in ix.inits or ix.inits[mm.input[1]].ndim != 2:
        return False
    w = ix.inits[mm.input[1]]
    g, b = _per_channel(ix, mul, w.shape[1]), _per_channel(ix, add, w.shape[1])
    if g is None or b is None or _only_consumer(ix, add.output[0]) is not mul or \
            _only_consumer(ix, mm.output[0]) is not add:
        return False
    mm.input[1] = _set_init(model, ix, mm.input[1], w * g[1])
    add.input[:] = [_set_init(model, ix, b[0], b[1] * g[1]) if i == b[0] else i for i in add.input]
    _bypass(ix, mul)
    return True


def _layerscale_into_conv(model, ix: OnnxIndex, mul) -> bool:
    """Mul(Reshape(Transpose(Conv(x, W, B), NCHW->NHWC)), g) -> the same with W·g, B·g per output channel."""
    rs = ix.producer.get(next((i for i in mul.input if i not in ix.inits), ""))
    tr = rs is not None and rs.op_type == "Reshape" and ix.producer.get(rs.input[0])
    conv = tr and tr.op_type == "Transpose" and ix.producer.get(tr.input[0])
    if not conv or conv.op_type != "Conv" or len(conv.input) != 3 or not all(i in ix.inits for i in conv.input[1:]):
        return False
    perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
    w = ix.inits[conv.input[1]]
    g = _per_channel(ix, mul, w.shape[0])
    shape = ix.inits.get(rs.input[1])
    if perm != [0, 2, 3, 1] or g is None or shape is None or int(shape[-1]) != w.shape[0] or \
            _only_consumer(ix, rs.output[0]) is not mul or _only_consumer(ix, tr.output[0]) is not rs or \
            _only_consumer(ix, conv.output[0]) is not tr:
        return False
    conv.input[1] = _set_init(model, ix, conv.input[1], w * g[1][:, None, None, None])
    conv.input[2] = _set_init(model, ix, conv.input[2], ix.inits[conv.input[2]] * g[1])
    _bypass(ix, mul)
    return True


def _gelu_scale_into_conv(model, ix: OnnxIndex, scaled) -> bool:
    """GELU (x·0.5)·((erf+1)·s) + b -> Conv  =>  (x·0.5)·(erf+1) + b/s -> Conv with weights ·s."""
    one = ix.producer.get(next((i for i in scaled.input if i not in ix.inits), ""))
    outer = _only_consumer(ix, scaled.output[0])
    add = outer is not None and outer.op_type == "Mul" and _only_consumer(ix, outer.output[0])
    conv = add and add.op_type == "Add" and _only_consumer(ix, add.output[0])
    if one is None or one.op_type != "Add" or not any(ix.producer.get(i) is not None and
                                                      ix.producer[i].op_type == "Erf" for i in one.input):
        return False
    if not conv or conv.op_type != "Conv" or conv.input[0] != add.output[0] or conv.input[1] not in ix.inits:
        return False
    w = ix.inits[conv.input[1]]
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    channels = w.shape[0] if group == w.shape[0] and w.shape[1] == 1 else w.shape[1] if group == 1 else None
    s, b = _per_channel(ix, scaled, channels, axis=1), _per_channel(ix, add, channels, axis=1)
    if channels is None or s is None or b is None or np.abs(s[1]).min() <= 1e-6 * np.abs(s[1]).max():
        return False
    scale = s[1][:, None, None, None] if group > 1 else s[1][None, :, None, None]
    conv.input[1] = _set_init(model, ix, conv.input[1], w * scale)
    add.input[:] = [_set_init(model, ix, b[0], (b[1] / s[1]).reshape(ix.inits[b[0]].shape)) if i == b[0] else i
                    for i in add.input]
    _bypass(ix, scaled)
    return True


def pad_into_conv(model) -> tuple[object, int]:
    """`Conv(Pad(x, zeros around H, W))` -> `Conv(x, pads=...)`: onnx-tf writes every padded convolution as an
    explicit Pad before a VALID one, which hides the LPI's GELU -> BatchNorm -> Conv from `fold_scales`
    and costs a copy of the activation per convolution."""
    import onnx

    ix = OnnxIndex(model)
    done = 0
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        conv = _only_consumer(ix, pad.output[0])
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        pads = ix.inits.get(pad.input[1]) if len(pad.input) > 1 else None
        value = ix.inits.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        if conv is None or conv.op_type != "Conv" or conv.input[0] != pad.output[0] or mode != "constant" or \
                pads is None or pads.size != 8 or value is None or np.any(value) or len(pad.input) > 3 or \
                np.any(pads[[0, 1, 4, 5]]) or np.any(pads < 0):
            continue
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        new = [old[0] + int(pads[2]), old[1] + int(pads[3]), old[2] + int(pads[6]), old[3] + int(pads[7])]
        if "pads" in attrs:
            conv.attribute.remove(attrs["pads"])
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        _bypass(ix, pad)
        done += 1
    drop_unused(model)
    return model, done


def fold_scales(model) -> tuple[object, int]:
    """Per-channel constant Muls folded into neighbouring weights (module doc); returns the count."""
    ix = OnnxIndex(model)
    outputs = {o.name for o in model.graph.output}
    done = 0
    for mul in [n for n in model.graph.node if n.op_type == "Mul"]:
        if mul.output[0] in outputs or (_per_channel(ix, mul) is None and _per_channel(ix, mul, axis=1) is None):
            continue
        if _layerscale_into_matmul(model, ix, mul) or _layerscale_into_conv(model, ix, mul) or \
                _gelu_scale_into_conv(model, ix, mul):
            done += 1
    drop_unused(model)
    return model, done


def l2_norm_form(model) -> tuple[object, int]:
    """`Sqrt(ReduceSum(Mul(t, t), axes))` -> `ReduceL2(t, axes)`: XCA's norms of q and k in one node each
    (three nodes less per norm; the node keeps the Sqrt's name, so it stays inside its fused block)."""
    from onnx import helper

    ix = OnnxIndex(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    done = 0
    for sqrt in [n for n in model.graph.node if n.op_type == "Sqrt"]:
        red = ix.producer.get(sqrt.input[0])
        sq = red is not None and red.op_type == "ReduceSum" and ix.producer.get(red.input[0])
        if not sq or sq.op_type != "Mul" or sq.input[0] != sq.input[1] or len(red.input) < 2 or \
                red.input[1] not in ix.inits or _only_consumer(ix, sq.output[0]) is not red or \
                _only_consumer(ix, red.output[0]) is not sqrt:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in red.attribute if a.name != "noop_with_empty_axes"}
        inputs = [sq.input[0]]
        if opset >= 18:  # axes: an input from opset 18, an attribute before
            inputs.append(red.input[1])
        else:
            attrs["axes"] = [int(a) for a in np.reshape(ix.inits[red.input[1]], -1)]
        sqrt.CopyFrom(helper.make_node("ReduceL2", inputs, [sqrt.output[0]], name=sqrt.name, **attrs))
        done += 1
    drop_unused(model)
    return model, done


def drop_unused(model) -> None:
    """After a rewrite: remove nodes whose outputs nothing reads, then initializers nothing
    reads and value_info of tensors no node produces any more."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    produced = {o for n in model.graph.node for o in n.output}
    keep_vi = [v for v in model.graph.value_info if v.name in produced]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep_vi)


# The passes in the order they run, by the name manifests and `optimize_skip` use (one list, like tf2onnx's
# optimizer table): each takes a model and returns (model, rewrites made); adding a rewrite is one entry here.
PASSES: tuple[tuple[str, Callable], ...] = (
    ("tensordot_folded", fold_tensordot),
    ("pads_into_conv", pad_into_conv),  # before scales_folded: onnx-tf's padded LPI convs then match it
    ("layernorm", fuse_layernorm),
    ("scales_folded", fold_scales),
    ("gelu_div", gelu_div_form),
    ("l2_norm", l2_norm_form),
)
REWRITES = tuple(name for name, _ in PASSES)


def optimize(model, skip: tuple[str, ...] = ()) -> tuple[object, dict]:
    """Every rewrite (but those named in `skip`, for measuring one off), kept only if the whole model still
    computes the same on the probe. `skip` comes from a target's `optimize_skip`: a misspelt name would
    silently measure nothing, so unknown names are refused."""
    import onnx

    unknown = sorted(set(skip) - set(REWRITES))
    if unknown:
        raise SpecError(f"optimize_skip: unknown ONNX rewrite(s) {', '.join(unknown)} "
                            f"(known: {', '.join(REWRITES)})")
    original = onnx.ModelProto()
    original.CopyFrom(model)
    counts = {}
    for name, rewrite in PASSES:
        model, counts[name] = (model, 0) if name in skip else rewrite(model)
    if not any(counts.values()):
        return original, counts
    out = original.graph.output[0].name
    before, after = _probe(original, [out])[out], _probe(model, [out])[out]
    err = rel_max_err(after, before)
    if err > _RTOL:
        log.warning("ONNX rewrites changed the output by %.2g (relative); not applied", err)
        return original, {**dict.fromkeys(counts, 0), "rejected_rel_err": err}
    log.info("ONNX rewrites %s (output rel. max error %.2g)", counts, err)
    return model, {**counts, "rel_err": err}
