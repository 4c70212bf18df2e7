"""`xcit-edge inspect`: what a SavedModel is, read from its protobuf without running it.

Nothing here loads the graph into a session or calls a function: signatures, variables
and ops come from `saved_model.pb`, so inspecting an untrusted model is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xcit_edge.errors import UsageError
from xcit_edge.savedmodel import preprocessing_of, read_metadata
from xcit_edge.zoo import get_config, param_count, timm_names

MAX_PB_BYTES = 2 << 30  # protobuf's own limit


@dataclass
class TensorSpecInfo:
    key: str
    name: str
    dtype: str
    shape: list[int] | None  # -1 for unknown dims, None for unknown rank

    def describe(self) -> str:
        shape = "?" if self.shape is None else "[" + ",".join(str(d) for d in self.shape) + "]"
        return f"{self.key}: {self.dtype} {shape} ({self.name})"


@dataclass
class Signature:
    key: str
    inputs: list[TensorSpecInfo]
    outputs: list[TensorSpecInfo]


@dataclass
class ModelInfo:
    path: Path
    signatures: list[Signature]
    layout: str
    params: int
    params_origin: str
    variant: str | None
    variant_origin: str
    preprocessing: dict
    preprocessing_origin: str
    ops: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["path"] = str(self.path)
        return d


def read_saved_model_proto(path: Path):
    """The parsed `saved_model.pb`; one-line errors for missing, huge or corrupt files."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(path) / "saved_model.pb"
    if not pb.is_file():
        raise UsageError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    if pb.stat().st_size > MAX_PB_BYTES:
        raise UsageError(f"{pb}: larger than protobuf's 2 GiB limit")
    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(pb.read_bytes())
    except (DecodeError, RuntimeError) as e:
        raise UsageError(f"{pb}: corrupt SavedModel protobuf ({e})") from e
    if not sm.meta_graphs:
        raise UsageError(f"{pb}: SavedModel holds no meta graph")
    return sm


def _tensor_info(key: str, info) -> TensorSpecInfo:
    from tensorflow.python.framework import dtypes

    try:
        dtype = dtypes.as_dtype(info.dtype).name
    except TypeError:
        dtype = f"dtype#{info.dtype}"
    shape = None if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]
    return TensorSpecInfo(key, info.name, dtype, shape)


def signatures_of(meta_graph) -> list[Signature]:
    sigs = []
    for key in sorted(meta_graph.signature_def):
        if key.startswith("__"):  # __saved_model_init_op and friends
            continue
        sd = meta_graph.signature_def[key]
        sigs.append(Signature(
            key,
            [_tensor_info(k, sd.inputs[k]) for k in sorted(sd.inputs)],
            [_tensor_info(k, sd.outputs[k]) for k in sorted(sd.outputs)],
        ))
    return sigs


def input_layout(shape: list[int] | None) -> str:
    """NHWC / NCHW from a 4-D image input shape (3 channels), else 'unknown'."""
    if not shape or len(shape) != 4:
        return "unknown"
    if shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    if shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    return "NHWC" if shape[3] == 3 else "unknown"


def graph_ops(meta_graph) -> list[str]:
    """Every op type in the graph and its function library."""
    ops = {n.op for n in meta_graph.graph_def.node}
    for fn in meta_graph.graph_def.library.function:
        ops.update(n.op for n in fn.node_def)
    return sorted(ops)


def count_parameters(meta_graph) -> tuple[int, str]:
    """Trainable variables from the object graph, else float constants (foreign frozen graphs)."""
    import numpy as np

    total = 0
    for node in meta_graph.object_graph_def.nodes:
        if node.WhichOneof("kind") == "variable" and node.variable.trainable:
            total += int(np.prod([d.size for d in node.variable.shape.dim]))
    if total:
        return total, "trainable variables"
    consts = list(meta_graph.graph_def.node)
    for fn in meta_graph.graph_def.library.function:
        consts.extend(fn.node_def)
    for n in consts:
        if n.op == "Const" and n.attr["dtype"].type in (1, 19, 14):  # float32, float16, bfloat16
            dims = [d.size for d in n.attr["value"].tensor.tensor_shape.dim]
            if len(dims) >= 1 and int(np.prod(dims)) > 1:
                total += int(np.prod(dims))
    return total, "float constants (approximate: includes non-parameter constants)"


def guess_variant(img_size: int | None, out_dim: int | None, params: int) -> str | None:
    """The timm architecture whose resolution, output width and parameter count fit best."""
    best, best_err = None, 0.02  # within 2%
    for name in timm_names():
        for features in (False, True):
            cfg = get_config(name, features=features)
            if (img_size and cfg.img_size != img_size) or (out_dim and cfg.output_dim != out_dim):
                continue
            err = abs(param_count(cfg) - params) / param_count(cfg)
            if err < best_err:
                best, best_err = name + ("_fe" if features else ""), err
    return best


def inspect_model(path: Path) -> ModelInfo:
    """Describe the SavedModel at `path` (a resolved directory)."""
    sm = read_saved_model_proto(path)
    mg = sm.meta_graphs[0]
    sigs = signatures_of(mg)
    if not sigs:
        raise UsageError(f"{path}: SavedModel has no serving signature")
    main = next((s for s in sigs if s.key == "serving_default"), sigs[0])
    in_shape = main.inputs[0].shape if main.inputs else None
    layout = input_layout(in_shape)
    params, params_origin = count_parameters(mg)
    meta = read_metadata(path)
    img_size = None
    if in_shape and layout != "unknown":
        img_size = in_shape[1] if layout == "NHWC" else in_shape[2]
        img_size = img_size if img_size and img_size > 0 else None
    if meta:
        variant = meta["arch"] + ("_fe" if meta.get("features") else "")
        variant_origin = "recorded by xcit-edge build"
    else:
        out_shape = main.outputs[0].shape if main.outputs else None
        out_dim = out_shape[-1] if out_shape and out_shape[-1] > 0 else None
        variant = guess_variant(img_size, out_dim, params)
        variant_origin = "guessed from input size, output width and parameter count" if variant else "not recognised"
    pre, pre_origin = preprocessing_of(path, img_size or 224)
    return ModelInfo(Path(path), sigs, layout, params, params_origin, variant, variant_origin,
                     pre.to_dict(), pre_origin, graph_ops(mg))
