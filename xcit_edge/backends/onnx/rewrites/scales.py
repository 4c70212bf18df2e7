"""Per-channel constant multiplications (LayerScale, the LPI BatchNorm scale) folded into the next weights."""

from __future__ import annotations

import numpy as np

from xcit_edge.backends.onnx.index import OnnxIndex
from xcit_edge.backends.onnx.rewrites.common import bypass, drop_unused, only_consumer, per_channel, set_init


def _layerscale_into_matmul(model, ix: OnnxIndex, mul) -> bool:
    """Mul(Add(MatMul(x, W), b), g) -> Add(MatMul(x, W·g), b·g)."""
    add = ix.producer.get(next((i for i in mul.input if i not in ix.inits), ""))
    mm = add is not None and add.op_type == "Add" and ix.producer.get(next((i for i in add.input if i not in ix.inits),
                                                                           ""))
    if not mm or mm.op_type != "MatMul" or mm.input[1] not in ix.inits or ix.inits[mm.input[1]].ndim != 2:
        return False
    w = ix.inits[mm.input[1]]
    g, b = per_channel(ix, mul, w.shape[1]), per_channel(ix, add, w.shape[1])
    if g is None or b is None or only_consumer(ix, add.output[0]) is not mul or \
            only_consumer(ix, mm.output[0]) is not add:
        return False
    mm.input[1] = set_init(model, ix, mm.input[1], w * g[1])
    add.input[:] = [set_init(model, ix, b[0], b[1] * g[1]) if i == b[0] else i for i in add.input]
    bypass(ix, mul)
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
    g = per_channel(ix, mul, w.shape[0])
    shape = ix.inits.get(rs.input[1])
    if perm != [0, 2, 3, 1] or g is None or shape is None or int(shape[-1]) != w.shape[0] or \
            only_consumer(ix, rs.output[0]) is not mul or only_consumer(ix, tr.output[0]) is not rs or \
            only_consumer(ix, conv.output[0]) is not tr:
        return False
    conv.input[1] = set_init(model, ix, conv.input[1], w * g[1][:, None, None, None])
    conv.input[2] = set_init(model, ix, conv.input[2], ix.inits[conv.input[2]] * g[1])
    bypass(ix, mul)
    return True


def _gelu_scale_into_conv(model, ix: OnnxIndex, scaled) -> bool:
    """GELU (x·0.5)·((erf+1)·s) + b -> Conv  =>  (x·0.5)·(erf+1) + b/s -> Conv with weights ·s."""
    one = ix.producer.get(next((i for i in scaled.input if i not in ix.inits), ""))
    outer = only_consumer(ix, scaled.output[0])
    add = outer is not None and outer.op_type == "Mul" and only_consumer(ix, outer.output[0])
    conv = add and add.op_type == "Add" and only_consumer(ix, add.output[0])
    if one is None or one.op_type != "Add" or not any(ix.producer.get(i) is not None and
                                                      ix.producer[i].op_type == "Erf" for i in one.input):
        return False
    if not conv or conv.op_type != "Conv" or conv.input[0] != add.output[0] or conv.input[1] not in ix.inits:
        return False
    w = ix.inits[conv.input[1]]
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    channels = w.shape[0] if group == w.shape[0] and w.shape[1] == 1 else w.shape[1] if group == 1 else None
    s, b = per_channel(ix, scaled, channels, axis=1), per_channel(ix, add, channels, axis=1)
    if channels is None or s is None or b is None or np.abs(s[1]).min() <= 1e-6 * np.abs(s[1]).max():
        return False
    scale = s[1][:, None, None, None] if group > 1 else s[1][None, :, None, None]
    conv.input[1] = set_init(model, ix, conv.input[1], w * scale)
    add.input[:] = [set_init(model, ix, b[0], (b[1] / s[1]).reshape(ix.inits[b[0]].shape)) if i == b[0] else i
                    for i in add.input]
    bypass(ix, scaled)
    return True


def fold_scales(model) -> tuple[object, int]:
    """Per-channel constant Muls folded into neighbouring weights (module doc); returns the count."""
    ix = OnnxIndex(model)
    outputs = {o.name for o in model.graph.output}
    done = 0
    for mul in [n for n in model.graph.node if n.op_type == "Mul"]:
        if mul.output[0] in outputs or (per_channel(ix, mul) is None and per_channel(ix, mul, axis=1) is None):
            continue
        if _layerscale_into_matmul(model, ix, mul) or _layerscale_into_conv(model, ix, mul) or \
                _gelu_scale_into_conv(model, ix, mul):
            done += 1
    drop_unused(model)
    return model, done
