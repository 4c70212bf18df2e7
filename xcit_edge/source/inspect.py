"""`xcit-edge inspect`: what a SavedModel is, read from its protobuf without running it.

Nothing here loads the graph into a session or calls a function: signatures, variables
and ops come from `saved_model.pb`, so inspecting an untrusted model is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xcit_edge.errors import UsageError
from xcit_edge.model.savedmodel import preprocessing_of, read_metadata
from xcit_edge.model.zoo import get_config, param_count

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
    structure: dict = field(default_factory=dict)  # graph.structure.Structure: what the graph shows

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


def trainable_parameters(meta_graph) -> int:
    """Trainable variables of the object graph: timm's count for our own SavedModels."""
    import numpy as np

    return sum(int(np.prod([d.size for d in node.variable.shape.dim])) for node in meta_graph.object_graph_def.nodes
               if node.WhichOneof("kind") == "variable" and node.variable.trainable)


def graph_structure(meta_graph, signature_key: str, img_size: int | None, out_dim: int | None):
    """The XCiT structure (`graph.structure.Structure`) of one signature, from the protobuf (functions
    expanded, nothing loaded)."""
    from xcit_edge.graph.structure import serving_nodes, structure_of, variable_shapes  # graph imports us

    return structure_of(serving_nodes(meta_graph, signature_key), variable_shapes(meta_graph), img_size, out_dim)


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
    meta = read_metadata(path)
    img_size = None
    if in_shape and layout != "unknown":
        img_size = in_shape[1] if layout == "NHWC" else in_shape[2]
        img_size = img_size if img_size and img_size > 0 else None
    out_shape = main.outputs[0].shape if main.outputs else None
    out_dim = out_shape[-1] if out_shape and out_shape[-1] > 0 else None
    structure = graph_structure(mg, main.key, img_size, out_dim)
    if meta:
        variant = meta["arch"] + ("_fe" if meta.get("features") else "")
        variant_origin = "recorded by xcit-edge build"
        params, params_origin = trainable_parameters(mg), "trainable variables"
    else:
        variant = structure.variant
        variant_origin = (f"identified from the graph: {structure.describe()}" if variant
                          else f"not recognised: {structure.reason}")
        params, params_origin = structure.weights, "float constants and variables in the serving graph"
        if variant:
            params = param_count(get_config(variant, img_size=img_size))
            params_origin = f"timm's count for {variant} ({structure.weights:,} float values in the graph)"
    if not meta:
        from xcit_edge.graph.structure import function_input_layout

        layout = function_input_layout(mg, main.key) or layout
    pre, pre_origin = preprocessing_of(path, img_size or 224)
    return ModelInfo(Path(path), sigs, layout, params, params_origin, variant, variant_origin,
                     pre.to_dict(), pre_origin, graph_ops(mg), structure.to_dict())
