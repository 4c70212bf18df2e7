"""Package each fused XCA block of an ONNX model as one node of a model-local function.

tf2onnx converts the fused graph op by op; the nodes of block i keep the TensorFlow names
`.../xcit_edge/xca_i/...` (`graph.xca`). Here they become one node `XCA` in domain
`xcit_edge`, calling one FunctionProto shared by every block: Netron shows 12 XCA nodes for
nano, and ONNX Runtime inlines the function when it loads the model. Inputs of the function
are the qkv tensor and the block's temperature; every other constant the block reads (shapes,
axes, ε) becomes a Constant inside the body, which is why the bodies of all blocks are
identical and one definition serves them all (checked: a block whose body differs stays
inlined and the artifact's XCA count says so). A temperature of exactly 1 (every block of a freshly
initialized model) reaches ONNX folded away, `τ / ‖q‖` written as `Reciprocal(‖q‖)`: such a block
gets its temperature back as an all-ones input first, so its body is the same as any other's and the
function's signature does not depend on weight values.

Consumers that cannot read model-local functions (OpenVINO 2026.4's ONNX frontend refuses
them: docs/RUNTIME_NOTES.md) get `inline(model)`: the same graph with the bodies expanded.
"""

from __future__ import annotations

import logging

import numpy as np

from xcit_edge.backends.onnx.rewrites.common import drop_unused
from xcit_edge.graph.xca_names import PREFIX, block_of, count_blocks

log = logging.getLogger(__name__)

DOMAIN = "xcit_edge"
OP_TYPE = "XCA"
def count_xca(model) -> int:
    """Fused XCA blocks in a model: function nodes, or groups of inlined nodes named for a block."""
    calls = sum(1 for n in model.graph.node if n.op_type == OP_TYPE and n.domain == DOMAIN)
    if calls:  # a quantizer names the nodes it inserts after a call's output tensor: not inlined blocks
        return calls
    return count_blocks(n.name for n in model.graph.node)


def _body(model, nodes: list, inits: dict, temperature: str):
    """(inputs, outputs, body nodes) of one block with tensors renamed by position."""
    from onnx import helper, numpy_helper

    produced = {o for n in nodes for o in n.output}
    names = {n.name for n in nodes}
    consumed_outside = {i for n in model.graph.node if n.name not in names for i in n.input}
    consumed_outside |= {o.name for o in model.graph.output}
    outputs = [o for n in nodes for o in n.output if o in consumed_outside]
    inputs = [i for n in nodes for i in n.input if i and i not in produced and i not in inits]
    inputs = list(dict.fromkeys(inputs))
    if len(inputs) != 1 or len(outputs) != 1:
        log.warning("XCA block %s: %d inputs (%s) and %d outputs (%s), not one of each; left inlined",
                    nodes[0].name, len(inputs), ", ".join(inputs[:3]), len(outputs), ", ".join(outputs[:3]))
        return None
    rename = {inputs[0]: "qkv", temperature: "temperature", outputs[0]: "out"}
    body = []
    for name in dict.fromkeys(i for n in nodes for i in n.input if i in inits and i != temperature):
        rename[name] = f"c{len(rename)}"
        body.append(helper.make_node("Constant", [], [rename[name]],
                                     value=numpy_helper.from_array(numpy_helper.to_array(inits[name]), rename[name])))
    for n in nodes:
        for o in n.output:
            rename.setdefault(o, f"t{len(rename)}")
    for k, n in enumerate(nodes):
        copy = helper.make_node(n.op_type, [rename.get(i, i) for i in n.input], [rename[o] for o in n.output],
                                name=f"n{k}", domain=n.domain)
        copy.attribute.extend(n.attribute)
        body.append(copy)
    return inputs[0], outputs[0], body


def _restore_temperature(model, nodes: list, inits: dict, block: int) -> str | None:
    """Undo the folding of a temperature of ones: `Reciprocal(q_norm_col)` becomes `Div(τ = 1, q_norm_col)`.

    The head count comes from the `q_norm_col` reshape's target shape (-1, h, d, 1) written by the TF-graph
    emitter (`graph.xca`). Returns the new temperature's name, or None when the block is not in that form.
    """
    from onnx import numpy_helper

    by_role = {n.name.rsplit("/", 1)[-1]: n for n in nodes}
    recip, col = by_role.get("q_scale"), by_role.get("q_norm_col")
    if recip is None or recip.op_type != "Reciprocal" or col is None or col.input[1] not in inits:
        return None
    shape = numpy_helper.to_array(inits[col.input[1]]).reshape(-1)
    if shape.size != 4:
        return None
    name = f"{PREFIX}{block}/temperature"
    tau = numpy_helper.from_array(np.ones((int(shape[1]), 1, 1), np.float32), name)
    model.graph.initializer.append(tau)
    inits[name] = tau
    recip.op_type = "Div"
    recip.input.insert(0, name)
    return name


def _blocks(model) -> dict[int, list]:
    """The nodes of each fused block, by block index, in graph order."""
    blocks: dict[int, list] = {}
    for n in model.graph.node:
        if (b := block_of(n.name)) is not None:
            blocks.setdefault(b, []).append(n)
    return dict(sorted(blocks.items()))


def _temperature(model, nodes: list, inits: dict, block: int) -> str | None:
    """The block's one temperature initializer (restored if folded away), else None (logged)."""
    temps = set(i for n in nodes for i in n.input if i in inits and "temperature" in i)
    if not temps and (restored := _restore_temperature(model, nodes, inits, block)):
        temps = {restored}
    if len(temps) != 1:
        log.warning("XCA block %d: %d temperature constants, not one; left inlined", block, len(temps))
        return None
    return temps.pop()


def package_xca(model):
    """Replace every fused block by an `xcit_edge.XCA` function call; returns (model, blocks packaged)."""
    from onnx import helper

    inits = {t.name: t for t in model.graph.initializer}
    blocks = _blocks(model)
    temps = {b: _temperature(model, nodes, inits, b) for b, nodes in blocks.items()}
    function, calls = None, {}
    for b, nodes in blocks.items():
        parsed = _body(model, nodes, inits, temps[b]) if temps[b] else None
        if parsed is None:
            continue
        qkv, out, body = parsed
        proto = helper.make_function(DOMAIN, OP_TYPE, ["qkv", "temperature"], ["out"], body,
                                     list(model.opset_import))
        if function is None:
            function = proto
        elif proto.SerializeToString() != function.SerializeToString():
            log.warning("XCA block %d: its body differs from block 0's; left inlined", b)
            continue
        calls[b] = helper.make_node(OP_TYPE, [qkv, temps[b]], [out], name=f"{PREFIX}{b}", domain=DOMAIN)
    if calls:
        _replace(model, {b: blocks[b] for b in calls}, calls)
        model.functions.append(function)
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
        drop_unused(model)
    return model, len(calls)


def _replace(model, blocks: dict[int, list], calls: dict) -> None:
    """Put each block's call where the block's first node was (keeps the graph topologically sorted)."""
    first = {nodes[0].name: calls[b] for b, nodes in blocks.items()}
    gone = {n.name for nodes in blocks.values() for n in nodes}
    kept = []
    for n in model.graph.node:
        if n.name in first:
            kept.append(first[n.name])
        if n.name not in gone:
            kept.append(n)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def inline(model):
    """The same model with every local function expanded (for consumers that cannot read them)."""
    import onnx.inliner

    return onnx.inliner.inline_local_functions(model)
