"""Where a full-integer XCiT model needs int16 activations, found by what the graph computes.

An int8-only accelerator runs int8 activations everywhere it can; two places of an XCiT graph cannot hold
in int8 whatever the calibration (trained fixture and its stress variant, 500 held-out images, calibrated on
the shipped sample: the equalized int8 model's cosine to float32 went from 0.990 to 0.9985 with both;
`benchmarks/npu_bits.py --calibration sample`, per-tensor errors: `benchmarks/tensor_errors.py`):

* **LayerNorm internals.** The residual stream that enters a LayerNorm has outlier channels (amplitude
  35-180 against ~1 for the rest, deep in the trained fixture), so the squared deviations reach 1e3-1e4
  and one int8 scale rounds nearly all the others to zero; the per-token reciprocal standard
  deviation reaches 44 on the near-constant class token, on the patch tokens' scale. Every tensor from the
  LayerNorm's mean to its output is int16, and calibrated over the whole calibration set's range (the
  running average of per-image extremes that suits other tensors clips the rare outliers that carry
  most of a variance: the second list of `int16_tensors`).
* **Class attention.** The class token (a learned constant, values ~0.02) is concatenated with patch
  tokens that reach +-35; one int8 scale for the concatenation rounds the class token to a step or
  two, and with it every query of the class-attention blocks. Everything from that concatenation to
  the head (two blocks attending from one token and the final norm) is int16; the logits stay int8.

A LayerNorm is matched from its RSQRT in the form the TFLite converter writes for Keras'
LayerNormalization after `tflite_rewrite.integer_friendly` (`mu = MEAN x; d = SUB x, mu; MUL d, d` or
`SQUARED_DIFFERENCE x, mu`; `MEAN`; `ADD eps`; `RSQRT`; then MUL / ADD / SUB / NEG combining them, with or
without gamma and beta, up to the ADD that joins the two halves). The class-token concatenation is a
CONCATENATION of a constant `[1, 1, C]` with a computed `[1, N, C]`. Neither depends on layer names or
weight values (random init included).
"""

from __future__ import annotations

from collections.abc import Iterable

from xcit_edge.backends.tflite.rewrite import OpGraph, _Model

_COMBINE = ("MUL", "ADD", "SUB", "NEG")  # how a LayerNorm joins its statistics to its input


def _inputs(g: OpGraph, op: int) -> list[int]:
    """The op's computed inputs (made by an op or fed to the model; constants of any type left out)."""
    fed = {int(i) for i in g.m.sub.inputs}
    return [int(t) for t in g.ops[op].inputs if int(t) in g.producer or int(t) in fed]


def _statistics(g: OpGraph, rsqrt: int) -> tuple[int, list[int]] | None:
    """(the LayerNorm's input tensor, its statistics' tensors up to the RSQRT) or None if not a LayerNorm."""
    chain = [int(g.ops[rsqrt].outputs[0])]
    t = int(g.ops[rsqrt].inputs[0])
    if (eps := g.made_by(t, "ADD")) is not None and len(_inputs(g, eps)) == 1:  # var + eps
        chain.append(t)
        t = _inputs(g, eps)[0]
    var = g.made_by(t, "MEAN")
    if var is None:
        return None
    chain.append(t)
    sq_t = int(g.ops[var].inputs[0])
    sq = g.producer.get(sq_t)
    if sq is None:
        return None
    chain.append(sq_t)
    if g.kind[sq] == "MUL" and int(g.ops[sq].inputs[0]) == int(g.ops[sq].inputs[1]):
        d_t = int(g.ops[sq].inputs[0])
        diff = g.made_by(d_t, "SUB")
        if diff is None:
            return None
        chain.append(d_t)
        x, mu = (int(i) for i in g.ops[diff].inputs[:2])
    elif g.kind[sq] == "SQUARED_DIFFERENCE":
        x, mu = (int(i) for i in g.ops[sq].inputs[:2])
    else:
        return None
    mean = g.made_by(mu, "MEAN")
    if mean is None or int(g.ops[mean].inputs[0]) != x:
        return None
    return x, [*chain, mu]


def _combination(g: OpGraph, x: int, seeds: list[int]) -> list[int]:
    """The tensors combining the statistics with the input, up to the ADD of two of them (the output)."""
    found = set(seeds)
    frontier = list(seeds)
    out: list[int] = []
    while frontier:
        t = frontier.pop()
        for c in g.consumers.get(t, []):
            o = int(g.ops[c].outputs[0])
            ins = _inputs(g, c)
            if o in found or g.kind[c] not in _COMBINE or not all(i in found or i == x for i in ins):
                continue
            found.add(o)
            out.append(o)
            if not (g.kind[c] == "ADD" and len(ins) == 2 and x not in ins):  # the LayerNorm's output: stop
                frontier.append(o)
    return out


def layernorm_tensors(g: OpGraph) -> list[int]:
    """Every tensor inside every LayerNorm (its input excluded), as tensor indexes."""
    tensors: list[int] = []
    for i, kind in enumerate(g.kind):
        if kind == "RSQRT" and (stats := _statistics(g, i)) is not None:
            x, chain = stats
            tensors += chain + _combination(g, x, chain)
    return list(dict.fromkeys(tensors))


def class_attention_tensors(g: OpGraph) -> list[int]:
    """Every tensor from the class-token concatenation up to the model outputs, which stay int8: an int8
    accelerator's I/O (the head's input is requantized to int8 for it)."""
    start = _class_token_concatenation(g)
    outputs = {int(o) for o in g.m.sub.outputs}
    return [] if start is None else [t for t in _descendants(g, [start]) if t not in outputs]


def _class_token_concatenation(g: OpGraph) -> int | None:
    """The output of the first CONCATENATION of a constant [1, 1, C] with a computed [1, N, C], or None."""
    for i, kind in enumerate(g.kind):
        if kind != "CONCATENATION" or len(g.ops[i].inputs) != 2:
            continue
        shapes = [g.m.sub.tensors[int(t)].shape for t in g.ops[i].inputs]
        consts = [int(t) not in g.producer and g.m.value(int(t)) is not None for t in g.ops[i].inputs]
        if sum(consts) == 1 and all(s is not None and len(s) == 3 for s in shapes):
            token = shapes[consts.index(True)]
            if int(token[0]) == 1 and int(token[1]) == 1:
                return int(g.ops[i].outputs[0])
    return None


def _descendants(g: OpGraph, starts: Iterable[int]) -> list[int]:
    seen: dict[int, None] = {}
    frontier = list(starts)
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen[t] = None
        frontier += [int(o) for c in g.consumers.get(t, []) for o in g.ops[c].outputs]
    return list(seen)


def int16_tensors(data: bytes, layernorms: bool, class_attention: bool) -> tuple[list[str], list[str]]:
    """(names of the tensors to quantize with int16 activations, names of those to calibrate over the whole
    calibration set's range) in the float model `data`: the LayerNorm internals (both lists) and the
    class-attention stage (the first list), as asked."""
    g = OpGraph(_Model(data))
    norms = layernorm_tensors(g) if layernorms else []
    cls = class_attention_tensors(g) if class_attention else []
    name = [g.m.sub.tensors[t].name for t in range(len(g.m.sub.tensors))]

    def names(ts: list[int]) -> list[str]:
        return list(dict.fromkeys(n.decode() if isinstance(n, bytes) else str(n) for n in (name[t] for t in ts)))
    return names(norms + cls), names(norms)
