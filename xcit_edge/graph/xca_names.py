"""The naming contract of fused XCA blocks: how every backend finds, counts and taps them in its artifact.

`graph.xca` names every node of fused block i `xcit_edge/xca_i/...`. Converters keep TensorFlow node
names as prefixes of their own (tf2onnx: `PartitionedCall/xcit_edge/xca_0/gram`, TFLite tensor names,
OpenVINO friendly names), so the block a converted op belongs to is read from its name: that is how
`convert` checks that every block survived conversion and how `validate` compares block outputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PREFIX = "xcit_edge/xca_"
_BLOCK = re.compile(re.escape(PREFIX) + r"(\d+)/")


def block_of(name: str) -> int | None:
    """The fused block a node or tensor name belongs to (converters keep TF names as prefixes)."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def count_blocks(names: Iterable[str]) -> int:
    """How many fused XCA blocks a converted model shows, from its op or tensor names."""
    return len({int(m.group(1)) for n in names for m in _BLOCK.finditer(n)})


def block_exits(ops: Iterable[tuple[str, str, list[str], list[str]]],
                transparent: frozenset[str] = frozenset()) -> dict[int, str]:
    """The tensor leaving each fused block in a converted model (what `validate` compares).

    `ops` are (name, op type, input tensors, output tensors) in execution order. A block's exit is
    the tensor of its last producing op that an op outside the block reads. `transparent` op types
    (quantize/dequantize) belong to no block: their outputs stand for their input, so a block
    whose output goes through Q/DQ still exits at its own (last) tensor.
    """
    member: dict[str, tuple[int, int, str]] = {}  # tensor -> (block, producer position, block tensor)
    exits: dict[int, tuple[int, str]] = {}
    for pos, (name, kind, inputs, outputs) in enumerate(ops):
        if kind in transparent:
            src = next((member[i] for i in inputs if i in member), None)
            if src is not None:
                member.update(dict.fromkeys(outputs, src))
            continue
        b = block_of(name)
        for i in inputs:
            if i in member and member[i][0] != b:
                blk, at, tensor = member[i]
                if blk not in exits or exits[blk][0] < at:
                    exits[blk] = (at, tensor)
        if b is not None:
            member.update({o: (b, pos, o) for o in outputs})
    return {b: t for b, (_, t) in sorted(exits.items())}
