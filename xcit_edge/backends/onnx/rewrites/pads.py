"""An explicit zero `Pad` before a `Conv` (onnx-tf's padded convolutions) into the Conv's `pads`."""

from __future__ import annotations

import numpy as np

from xcit_edge.backends.onnx.index import OnnxIndex
from xcit_edge.backends.onnx.rewrites.common import bypass, drop_unused, only_consumer


def pad_into_conv(model) -> tuple[object, int]:
    """`Conv(Pad(x, zeros around H, W))` -> `Conv(x, pads=...)`: onnx-tf writes every padded convolution as an
    explicit Pad before a VALID one, which hides the LPI's GELU -> BatchNorm -> Conv from `fold_scales`
    and costs a copy of the activation per convolution."""
    import onnx

    ix = OnnxIndex(model)
    done = 0
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        conv = only_consumer(ix, pad.output[0])
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
        bypass(ix, pad)
        done += 1
    drop_unused(model)
    return model, done
