"""LayerNorm as tf2onnx writes it (~13 elementwise nodes) into one `LayerNormalization` (opset 17)."""

from __future__ import annotations

import numpy as np

from xcit_edge.backends.onnx.index import OnnxIndex
from xcit_edge.backends.onnx.rewrites.common import drop_unused, probe_groups
from xcit_edge.metrics import rel_max_err

_MEANS = ("GlobalAveragePool", "ReduceMean")
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Neg", "Pow"}


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
    groups = [[s["x"], *(n.output[0] for n in s["region"])] for s in sites]
    # each LayerNorm is per row of its last axis: the first rows of every tensor check it
    choices = {k: _choose(ix, sites[k], values) for k, values in probe_groups(model, groups, view="rows")}
    replaced = 0
    for k, site in enumerate(sites):
        if choices[k] is None:
            continue
        out, gamma, beta = choices[k]
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
