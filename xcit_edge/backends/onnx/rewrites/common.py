"""What the ONNX rewrites share: the probe run, initializer edits, bypassing a node, dropping dead ones."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from xcit_edge.backends.onnx.index import OnnxIndex, array_of, forget, is_large, remember


def probe(model, tensors: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Values of `tensors` on a seeded input (batch 2 when the batch is dynamic), as extra graph outputs of
    a copy of the model. ONNX Runtime gets that copy without its large weights: they become graph inputs,
    fed from the arrays (`index.array_of`, shared inside `index.shared_arrays()`), which it reads in place.
    No serialized copy of the weights, and none in the session (as initializers, even ones handed over
    with `add_external_initializers`, they are copied into it)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    so.enable_cpu_mem_arena = False  # the arena grows in doubling chunks: up to twice what one run needs
    light, weights = _light_copy(model, tensors)
    sess = ort.InferenceSession(light.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del light
    inp = next(i for i in sess.get_inputs() if i.name not in weights)
    shape = [d if isinstance(d, int) and d > 0 else 2 for d in inp.shape]
    rng = np.random.default_rng(seed)
    if inp.type == "tensor(uint8)":  # --bake-preprocessing: raw pixels
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {inp.name: x, **weights}), strict=True))


# What one probe run may return, about: a model with many sites (77 LayerNorms of 13 nodes each in a 24-block
# model) at 384 px with 8 px patches would otherwise return every tensor of the model at once (over 10 GB).
PROBE_BUDGET_BYTES = 256 << 20


def probe_groups(model, groups: list[list[str]], budget: int = PROBE_BUDGET_BYTES
                 ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """`probe` over groups of tensors (one group per site a rewrite checks), as many groups per run as fit
    in `budget` bytes (measured on the first group): yields (group index, that group's values). The model
    must not change until the last group is yielded."""
    start, per_group = 0, None
    while start < len(groups):
        n = 1 if per_group is None else max(1, int(budget // max(per_group, 1.0)))
        chunk = groups[start:start + n]
        values = probe(model, [t for g in chunk for t in g])
        per_group = sum(v.nbytes for g in chunk for v in (values[t] for t in dict.fromkeys(g))) / len(chunk)
        for k, group in enumerate(chunk):
            yield start + k, {t: values[t] for t in group}
        del values
        start += n


def _light_copy(model, tensors: list[str]):
    """(a copy of `model` whose large initializers are graph inputs instead, with `tensors` as extra graph
    outputs; {input name: array})."""
    import onnx

    light = onnx.ModelProto()
    _copy_fields(model, light, skip={"graph"})
    _copy_fields(model.graph, light.graph, skip={"initializer"})
    known = {o.name for o in light.graph.output}
    for t in dict.fromkeys(tensors):
        if t not in known:
            light.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    weights = {}
    for t in model.graph.initializer:
        if not is_large(t):
            light.graph.initializer.append(t)
            continue
        weights[t.name] = array_of(t)
        light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light, weights


def _copy_fields(src, dst, skip: set[str]) -> None:
    """Every set field of protobuf message `src` but those in `skip`, copied into `dst`."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def scalar_one(ix: OnnxIndex, add) -> str | None:
    """The name of `add`'s constant input when it is 1.0 in a shape other than a scalar."""
    for name in add.input:
        c = ix.inits.get(name)
        if c is not None and c.size == 1 and c.ndim > 0 and float(c.reshape(-1)[0]) == 1.0:
            return name
    return None


def per_channel(ix: OnnxIndex, node, channels: int | None = None, axis: int = -1) -> tuple[str, np.ndarray] | None:
    """(name, values) of `node`'s constant operand when it varies along `axis` only: the last axis of
    tokens (shape (C,) or (1, 1, C)), or axis 1 of an NCHW tensor (shape (1, C, 1, 1))."""
    for name in node.input:
        c = ix.inits.get(name)
        if c is None or c.size < 2 or (channels and c.size != channels) or (axis == 1 and c.ndim != 4):
            continue
        if c.shape[axis] == c.size:
            return name, c.reshape(-1).astype(np.float32)
    return None


def only_consumer(ix: OnnxIndex, tensor: str):
    users = ix.consumers.get(tensor, [])
    return users[0] if len(users) == 1 else None


def set_init(model, ix: OnnxIndex, name: str, value: np.ndarray) -> str:
    """A new initializer (the old one may be shared): returns its name."""
    from onnx import numpy_helper

    new = f"{name}/folded{len(model.graph.initializer)}"
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), new))
    ix.inits[new] = value
    remember(new, value)
    return new


def bypass(ix: OnnxIndex, node) -> None:
    """Consumers of `node`'s output read its data input instead (node is then unused; `drop_unused`
    removes it). The index follows, so later folds see the new consumers without a rebuild."""
    src = next(i for i in node.input if i not in ix.inits)
    users = ix.consumers.pop(node.output[0], [])
    for c in users:
        c.input[:] = [src if i == node.output[0] else i for i in c.input]
    ix.consumers.setdefault(src, []).extend(users)


def drop_unused(model) -> None:
    """After a rewrite: remove nodes whose outputs nothing reads, then initializers nothing
    reads and value_info of tensors no node produces any more."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    forget(_remove_where(model.graph.initializer, lambda t: t.name not in used))
    produced = {o for n in model.graph.node for o in n.output}
    _remove_where(model.graph.value_info, lambda v: v.name not in produced)


def _remove_where(items, dead) -> list[str]:
    """Delete the `dead` elements of a repeated protobuf field in place. Not `del items[:]` and `extend`:
    with protobuf's upb backend that copies every kept element (every weight, for initializers) into the
    message's arena, where the old copies stay until the model itself is freed. Returns the removed names."""
    removed = []
    for i in reversed(range(len(items))):
        if dead(items[i]):
            removed.append(items[i].name)
            del items[i]
    return removed
