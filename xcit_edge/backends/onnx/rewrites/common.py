"""What the ONNX rewrites share: the probe run, initializer edits, bypassing a node, dropping dead ones."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from xcit_edge.backends.onnx.index import OnnxIndex, array_of, forget, is_large, remember

# `probe` views: what a probe returns of each tensor. The rewrites check per-row algebra (a LayerNorm over the
# last axis) or shapes (a folded Reshape), so they need a slice or the shape, not tensors of the whole model: at
# 384 px with 8 px patches one token tensor is 14 MB and the groups did not fit one run (a 24-block model ran
# its probes as dozens of whole-model runs: the probes grew with depth x resolution).
VIEWS = ("value", "rows", "shape")
PROBE_ROWS = 64  # "rows": the first rows of the tensor flattened to (rows, last axis)


def probe(model, tensors: list[str], seed: int = 0, view: str = "value") -> dict[str, np.ndarray]:
    """Values of `tensors` (or their `view`: the first PROBE_ROWS rows, the shape) on a seeded input (of batch
    1 when the batch is dynamic, 2 for shapes), as the only graph outputs of a copy of the model that holds
    only the nodes they need. ONNX Runtime gets that copy without its large weights: they become graph
    inputs, fed from the arrays (`index.array_of`, shared inside `index.shared_arrays()`), which it reads in
    place. No serialized copy of the weights, and none in the session (as initializers, even ones handed
    over with `add_external_initializers`, they are copied into it)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    so.enable_cpu_mem_arena = False  # the arena grows in doubling chunks: up to twice what one run needs
    light, weights, outputs = _light_copy(model, tensors, view)
    sess = ort.InferenceSession(light.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del light
    inp = next(i for i in sess.get_inputs() if i.name not in weights)
    batch = 2 if view == "shape" else 1  # shapes: batch 2 tells the batch axis from a fixed one
    shape = [d if isinstance(d, int) and d > 0 else batch for d in inp.shape]
    rng = np.random.default_rng(seed)
    if inp.type == "tensor(uint8)":  # --bake-preprocessing: raw pixels
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    names = list(dict.fromkeys(outputs.values()))
    got = dict(zip(names, sess.run(names, {inp.name: x, **weights}), strict=True))
    return {t: got[o] for t, o in outputs.items()}


# What one probe run may return, about: a model with many sites (77 LayerNorms of 13 nodes each in a 24-block
# model) at 384 px with 8 px patches would otherwise return every tensor of the model at once (over 10 GB).
PROBE_BUDGET_BYTES = 256 << 20


# What the viewed tensors of one "rows" probe may hold, whole: ONNX Runtime keeps each alive until its view runs,
# and runs the views late (a 24-block model at 384 px with 8 px patches: 4.4 GB for its 77 LayerNorms in one run).
LIVE_BUDGET_BYTES = 1 << 30


def probe_groups(model, groups: list[list[str]], budget: int = PROBE_BUDGET_BYTES, view: str = "value"
                 ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """`probe` over groups of tensors (one group per site a rewrite checks), as many groups per run as fit
    in `budget` bytes (measured on the first group; for "rows", as many as hold LIVE_BUDGET_BYTES whole, by
    shape inference): yields (group index, that group's values). The model must not change until the last
    group is yielded. Each run computes only what its groups need."""
    start, per_group = 0, (None if view == "value" else 0.0)
    ends = _live_chunks(model, groups) if view == "rows" else None
    while start < len(groups):
        n = 1 if per_group is None else max(1, int(budget // max(per_group, 1.0)))
        if ends:
            n = next(e for e in ends if e > start) - start
        chunk = groups[start:start + n]
        values = probe(model, [t for g in chunk for t in g], view=view)
        per_group = sum(v.nbytes for g in chunk for v in (values[t] for t in dict.fromkeys(g))) / len(chunk)
        for k, group in enumerate(chunk):
            yield start + k, {t: values[t] for t in group}
        del values
        start += n


def _live_chunks(model, groups: list[list[str]]) -> list[int]:
    """Where each chunk of `groups` ends, so that the whole tensors of a chunk (at batch 1, as the probe
    runs; unknown shapes count as nothing) stay within LIVE_BUDGET_BYTES."""
    shapes = shapes_of(model, [t for g in groups for t in g], batch=1)
    ends, held = [], 0
    for k, group in enumerate(groups):
        size = sum(4 * int(np.prod(shapes.get(t, (0,)))) for t in dict.fromkeys(group))
        if held and held + size > LIVE_BUDGET_BYTES:
            ends.append(k)
            held = 0
        held += size
    return [*ends, len(groups)]


def shapes_of(model, tensors: list[str], batch: int = 2) -> dict[str, tuple[int, ...]]:
    """The shapes of `tensors` at this batch, by ONNX shape inference (nothing runs), for those it infers
    whole; `probe(..., view="shape")` gives the rest. At 384 px with 8 px patches a run at batch 2 of a
    24-block model costs 20 s and several GB; inferring the shapes costs a second."""
    import onnx

    light, weights, _ = _light_copy(model, [model.graph.output[0].name])
    inp = next(i for i in light.graph.input if i.name not in weights)
    dims = inp.type.tensor_type.shape.dim
    if dims and not dims[0].HasField("dim_value"):
        dims[0].Clear()
        dims[0].dim_value = batch
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return {}
    found, wanted = {}, set(tensors)
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        shape = vi.type.tensor_type.shape
        if vi.name in wanted and vi.type.tensor_type.HasField("shape") and all(d.dim_value > 0 for d in shape.dim):
            found[vi.name] = tuple(int(d.dim_value) for d in shape.dim)
    return found


def _light_copy(model, tensors: list[str], view: str = "value"):
    """(a copy of `model` whose large initializers are graph inputs instead and whose outputs are `tensors`'
    views; {input name: array}; {tensor: the output holding its view})."""
    import onnx

    if view not in VIEWS:
        raise ValueError(f"probe view {view!r}: one of {VIEWS}")
    light = onnx.ModelProto()
    _copy_fields(model, light, skip={"graph"})
    _copy_fields(model.graph, light.graph, skip={"initializer", "output", "node"})
    light.graph.node.extend(_needed_nodes(model.graph, tensors))
    outputs = {t: _add_view(light.graph, t, view) for t in dict.fromkeys(tensors)}
    weights = {}
    for t in model.graph.initializer:
        if not is_large(t):
            light.graph.initializer.append(t)
            continue
        weights[t.name] = array_of(t)
        light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light, weights, outputs


def _needed_nodes(graph, tensors: list[str]) -> list:
    """The nodes `tensors` depend on, in graph order: ONNX Runtime runs every node of a session whatever
    is fetched, so a probe of early tensors would run the whole model. All of them where a node holds a
    subgraph (its outer-scope reads are not in its inputs)."""
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        return list(graph.node)
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    todo, needed = [producer[t] for t in tensors if t in producer], set()
    while todo:
        i = todo.pop()
        if i not in needed:
            needed.add(i)
            todo.extend(producer[t] for t in graph.node[i].input if t in producer)
    return [n for i, n in enumerate(graph.node) if i in needed]


def _add_view(graph, tensor: str, view: str) -> str:
    """Append to `graph` the nodes computing `view` of `tensor`, and that view as a graph output: its name."""
    from onnx import TensorProto, helper, numpy_helper

    out, dtype = tensor, TensorProto.FLOAT
    if view == "shape":
        out, dtype = f"{tensor}/xcit_edge_probe_shape", TensorProto.INT64
        graph.node.append(helper.make_node("Shape", [tensor], [out]))
    elif view == "rows":
        flat, out = f"{tensor}/xcit_edge_probe_flat", f"{tensor}/xcit_edge_probe_rows"
        bounds = [f"{tensor}/xcit_edge_probe_{b}" for b in ("start", "end", "axis")]
        for name, v in zip(bounds, (0, PROBE_ROWS, 0), strict=True):
            graph.initializer.append(numpy_helper.from_array(np.array([v], np.int64), name))
        graph.node.append(helper.make_node("Flatten", [tensor], [flat], axis=-1))
        graph.node.append(helper.make_node("Slice", [flat, *bounds], [out]))
    graph.output.append(helper.make_tensor_value_info(out, dtype, None))
    return out


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
