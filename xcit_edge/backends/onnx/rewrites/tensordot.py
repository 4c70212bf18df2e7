"""Keras Dense layers as tf2onnx writes them (Reshape, MatMul, Reshape) folded into one MatMul."""

from __future__ import annotations

from xcit_edge.backends.onnx.index import OnnxIndex
from xcit_edge.backends.onnx.rewrites.common import drop_unused, probe_groups, shapes_of


def fold_tensordot(model) -> tuple[object, int]:
    """`Reshape(x, (-1, D)) -> MatMul(W) -> Reshape(back)` (Keras Dense on tokens, as TF's
    Tensordot writes it) becomes `MatMul(x, W)`: ONNX MatMul broadcasts over leading axes. The
    runtime shape arithmetic feeding the second Reshape (Shape, Gather, Cast, Concat: about
    300 tiny nodes in nano) goes with it. Each site is checked on the probe: the second
    Reshape's output must have x's leading axes, at batch 2 (by shape inference where it knows them,
    else on the probe)."""
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
    groups = [[r1.input[0], r2.output[0]] for r1, _, r2 in sites]
    known = shapes_of(model, [t for g in groups for t in g])
    unknown = [k for k, g in enumerate(groups) if not all(t in known for t in g)]
    for _, values in probe_groups(model, [groups[k] for k in unknown], view="shape"):
        known.update({t: tuple(int(d) for d in v) for t, v in values.items()})
    shapes = {k: (known[x], known[y]) for k, (x, y) in enumerate(groups)}
    done = 0
    for k, (r1, mm, r2) in enumerate(sites):
        x, y = shapes[k]
        if len(x) < 3 or y != (*x[:-1], ix.inits[mm.input[1]].shape[1]):
            continue
        mm.input[0] = r1.input[0]
        mm.output[0] = r2.output[0]
        model.graph.node.remove(r2)
        done += 1
    drop_unused(model)
    return model, done
