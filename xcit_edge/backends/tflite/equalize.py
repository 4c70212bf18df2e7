"""LayerNorm channel equalization of a float TFLite model before int8 quantization (RepQ-ViT's scale fold).

Trained ViTs have post-LayerNorm activations whose channels differ in range by 10-100x; one int8 scale per
tensor (what an NPU's integer kernels take) then spends its levels on the widest channels. RepQ-ViT
(Li et al., ICCV 2023, "reparameterization of post-LayerNorm activations") measures each channel's range
on calibration data and moves the difference into the weights around it, which leaves the float function
unchanged:

    y_c = gamma_c * n_c + beta_c             (the LayerNorm output, channel c)
    y'_c = (y_c - d_c) / k_c                 gamma'_c = gamma_c / k_c, beta'_c = (beta_c - d_c) / k_c
    W y + b = (W diag(k)) y' + (W d + b)     every linear layer reading y

with k_c = range_c / mean(range) (every channel of y' gets the mean range) and d_c a shift that also
aligns the channels' centres. A depthwise convolution reading y takes the scale (channel c's kernel times
k_c) but no shift: its zero padding would see y' = 0 where y was 0.

The LayerNorm is matched in the form the TFLite converter writes for Keras' LayerNormalization
(`g = rsqrt(var + eps) * gamma`; `y = x * g + (-mean * g + beta)`, gamma and beta constants), and a
LayerNorm is folded only where every reader of its output, through reshapes and slices that keep the
channel axis last, is a FULLY_CONNECTED (input 0, constant float weights) or a DEPTHWISE_CONV_2D with
depth multiplier 1; anything else (a residual add, a concatenation, a model output) leaves it as it is.
The result is float rounding away from the input model (`verify` in `tflite/rewrite.py` measures it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from xcit_edge.backends.tflite.rewrite import OpGraph, _Model, compact

log = logging.getLogger(__name__)

_PASS_THROUGH = ("RESHAPE", "STRIDED_SLICE")  # keep the channel axis last (checked on shapes)
MIN_RELATIVE_RANGE = 1e-3  # a channel narrower than this (times the mean) keeps this scale: no blow-up


@dataclass(frozen=True)
class LayerNorm:
    """One foldable LayerNorm: its output tensor, the ops holding gamma and beta, and the readers."""

    output: int
    gamma_op: int  # index of MUL(rsqrt, gamma)
    gamma_input: int  # which input of that op is gamma
    beta_op: int  # index of ADD(-mean * g, beta)
    beta_input: int
    readers: tuple[int, ...]  # FULLY_CONNECTED / DEPTHWISE_CONV_2D op indexes


def _constant_operand(g: OpGraph, op: int, width: int) -> tuple[int, np.ndarray] | None:
    """(input position, value) of the op's constant per-channel operand ([..., width], `width` values)."""
    for pos, t in enumerate(g.ops[op].inputs):
        v = g.m.value(int(t))
        if v is not None and v.size == width and v.shape[-1] == width:
            return pos, v
    return None


def _readers(g: OpGraph, tensor: int, width: int) -> tuple[int, ...] | None:
    """The FULLY_CONNECTED / depthwise readers of `tensor` through channel-keeping ops; None if any reader
    is something else or the tensor is a model output."""
    if tensor in {int(o) for o in g.m.sub.outputs}:
        return None
    found: list[int] = []
    for c in g.consumers.get(tensor, []):
        op, kind = g.ops[c], g.kind[c]
        if kind in _PASS_THROUGH and int(op.inputs[0]) == tensor and g.channels(int(op.outputs[0])) == width:
            more = _readers(g, int(op.outputs[0]), width)
            if more is None:
                return None
            found += more
        elif kind == "FULLY_CONNECTED" and int(op.inputs[0]) == tensor and g.m.value(int(op.inputs[1])) is not None:
            found.append(c)
        elif (kind == "DEPTHWISE_CONV_2D" and int(op.inputs[0]) == tensor and op.builtinOptions.depthMultiplier == 1
              and g.m.value(int(op.inputs[1])) is not None):
            found.append(c)
        else:
            return None
    return tuple(found) or None


def _match(g: OpGraph, out_op: int) -> LayerNorm | None:
    """The LayerNorm whose output is ADD op `out_op`'s, or None."""
    width = g.channels(int(g.ops[out_op].outputs[0]))
    adds = [int(t) for t in g.ops[out_op].inputs]
    for scaled, shifted in ((adds[0], adds[1]), (adds[1], adds[0])):
        mul2, add1 = g.made_by(scaled, "MUL"), g.made_by(shifted, "ADD")
        if mul2 is None or add1 is None:
            continue
        beta = _constant_operand(g, add1, width)
        mul1 = next((g.made_by(int(t), "MUL") for t in g.ops[add1].inputs if g.made_by(int(t), "MUL") is not None),
                    None)
        if beta is None or mul1 is None:
            continue
        shared = {int(t) for t in g.ops[mul2].inputs} & {int(t) for t in g.ops[mul1].inputs}
        gamma_op = next((g.made_by(t, "MUL") for t in shared if g.made_by(t, "MUL") is not None), None)
        if gamma_op is None or not any(g.made_by(int(t), "RSQRT") is not None for t in g.ops[gamma_op].inputs):
            continue
        gamma = _constant_operand(g, gamma_op, width)
        readers = _readers(g, int(g.ops[out_op].outputs[0]), width)
        if gamma is not None and readers:
            return LayerNorm(int(g.ops[out_op].outputs[0]), gamma_op, gamma[0], add1, beta[0], readers)
    return None


def find_layernorms(data: bytes) -> list[LayerNorm]:
    """Every foldable LayerNorm of the model (see the module docstring), in execution order."""
    g = OpGraph(_Model(data))
    return [ln for i, kind in enumerate(g.kind) if kind == "ADD" and (ln := _match(g, i)) is not None]


def channel_ranges(data: bytes, tensors: list[int], samples: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (min, max) of each tensor over the samples (the model's input contract, one per invoke),
    on LiteRT's builtin kernels with every intermediate tensor kept."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=data, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    lo: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}
    for x in samples:
        interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        interp.invoke()
        for t in tensors:
            y = interp.get_tensor(t).reshape(-1, interp.get_tensor(t).shape[-1])
            lo[t] = np.minimum(lo[t], y.min(0)) if t in lo else y.min(0)
            hi[t] = np.maximum(hi[t], y.max(0)) if t in hi else y.max(0)
    return {t: (lo[t].astype(np.float64), hi[t].astype(np.float64)) for t in tensors}


def _factors(lo: np.ndarray, hi: np.ndarray, shift: bool) -> tuple[np.ndarray, np.ndarray]:
    """(k, d): every channel's range becomes the mean range and (with `shift`) its centre the same."""
    span = hi - lo
    mean = float(span.mean()) or 1.0
    k = np.maximum(span / mean, MIN_RELATIVE_RANGE)
    if not shift:
        return k, np.zeros_like(k)
    centre = (lo + hi) / 2
    return k, centre - k * float(np.mean(centre / k))


def _replace_input(m: _Model, op, pos: int, name: str, value: np.ndarray) -> None:
    """Give the op a new constant at input `pos` (shared constants elsewhere stay as they were)."""
    op.inputs[pos] = m.constant(name, value.astype(np.float32))


def _fold(m: _Model, g: OpGraph, ln: LayerNorm, lo: np.ndarray, hi: np.ndarray) -> None:
    shift = all(g.kind[r] == "FULLY_CONNECTED" for r in ln.readers)
    k, d = _factors(lo, hi, shift)
    name = m.sub.tensors[ln.output].name
    gop, bop = g.ops[ln.gamma_op], g.ops[ln.beta_op]
    gamma = m.value(int(gop.inputs[ln.gamma_input]))
    beta = m.value(int(bop.inputs[ln.beta_input]))
    _replace_input(m, gop, ln.gamma_input, f"{name}/equalized_gamma", gamma / k.reshape(gamma.shape))
    shifted = (beta - d.reshape(beta.shape)) / k.reshape(beta.shape)
    _replace_input(m, bop, ln.beta_input, f"{name}/equalized_beta", shifted)
    for r in ln.readers:
        op = g.ops[r]
        w = m.value(int(op.inputs[1])).astype(np.float64)
        _replace_input(m, op, 1, f"{name}/equalized_weights_{r}", w * k)  # FC [out, C], depthwise [1, kh, kw, C]
        if g.kind[r] == "FULLY_CONNECTED" and shift:
            bias_index = int(op.inputs[2]) if len(op.inputs) > 2 else -1
            bias = m.value(bias_index) if bias_index >= 0 else np.zeros(w.shape[0], np.float32)
            if len(op.inputs) < 3:
                op.inputs = [*op.inputs, -1]
            _replace_input(m, op, 2, f"{name}/equalized_bias_{r}", bias + w @ d)


def equalize_layernorms(data: bytes, samples: np.ndarray) -> tuple[bytes, int]:
    """The model with every foldable LayerNorm equalized on the samples' channel ranges, and how many."""
    lns = find_layernorms(data)
    if not lns:
        return data, 0
    ranges = channel_ranges(data, [ln.output for ln in lns], samples)
    m = _Model(data)
    g = OpGraph(m)
    for ln in lns:
        _fold(m, g, ln, *ranges[ln.output])
    compact(m)
    log.debug("equalized %d LayerNorms on %d samples", len(lns), len(samples))
    return m.bytes(), len(lns)
