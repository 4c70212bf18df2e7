"""GELU in the form ONNX Runtime's GeluFusion matches: `Erf(Div(x, √2))`, a scalar `+1`."""

from __future__ import annotations

import numpy as np

from xcit_edge.backends.onnx.index import OnnxIndex
from xcit_edge.backends.onnx.rewrites.common import drop_unused, only_consumer, scalar_one


def gelu_div_form(model) -> tuple[object, int]:
    """`Erf(Mul(x, 1/√2))` -> `Erf(Div(x, √2))`, and the `+1` after it a scalar: the form ONNX Runtime
    fuses into Gelu. Returns the number of Mul -> Div rewrites."""
    from onnx import numpy_helper

    ix = OnnxIndex(model)
    done = 0
    for k, erf in enumerate([n for n in model.graph.node if n.op_type == "Erf"]):
        add = only_consumer(ix, erf.output[0])
        one = add is not None and add.op_type == "Add" and scalar_one(ix, add)
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
