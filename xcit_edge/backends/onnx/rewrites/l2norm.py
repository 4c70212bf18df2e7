"""`Sqrt(ReduceSum(Mul(t, t)))` into `ReduceL2(t)` (XCA's q and k norms)."""

from __future__ import annotations

import numpy as np

from xcit_edge.backends.onnx.index import OnnxIndex
from xcit_edge.backends.onnx.rewrites.common import drop_unused, only_consumer


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
                red.input[1] not in ix.inits or only_consumer(ix, sq.output[0]) is not red or \
                only_consumer(ix, red.output[0]) is not sqrt:
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
