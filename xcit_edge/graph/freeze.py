"""Load one signature of a SavedModel, check it is an XCiT image model, freeze and adapt it.

Why freeze: the TFLite converter silently drops the weights of our Keras-3 SavedModels
(`from_saved_model` gives a 531 KB model that outputs NaN; measured), and tf2onnx and
OpenVINO read a constant-only GraphDef most reliably. Frozen, every weight is a constant, whatever
wrote the SavedModel (Keras, `tf.Module`, onnx2tf, onnx-tf); it is held apart from the graph's
structure (`graph/weights.py`) so that rewrites, probes and converters do not each copy it.

The prepared function always has one input called `input` and one output; with
`bake_preprocessing` the input becomes uint8 RGB NHWC and the normalization (and an NCHW
transpose for channels-first sources) runs inside the graph.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xcit_edge.data.preprocessing import LAYOUTS, Preprocessing, layout_perm, to_layout
from xcit_edge.errors import ConversionError, UsageError, first_line
from xcit_edge.graph.rewrites import GraphSite, canonical
from xcit_edge.graph.run import GraphSession
from xcit_edge.graph.structure import input_layout, structure_of
from xcit_edge.graph.weights import Frozen, freeze_signature
from xcit_edge.graph.xca import FusionReport, count_structural, fuse_xca
from xcit_edge.model.savedmodel import preprocessing_of, read_metadata
from xcit_edge.records import IOContract, TensorInfo, XcaRecord
from xcit_edge.source.inspect import read_saved_model_proto

log = logging.getLogger(__name__)


@dataclass
class PreparedGraph:
    """A frozen, canonical, single-input single-output model every backend converts from.

    The graph is held as a `Frozen` graph (`graph/weights.py`): its structure with the weights apart, so the
    model lives once in memory; `materialized()` makes the self-contained copy a converter needs, on demand
    (drop it when done)."""

    frozen: Frozen  # input node `input`, output node `output`
    input_tensor: str
    output_tensor: str
    input_shape: list[int | None]
    input_dtype: str
    output_shape: list[int | None]
    layout: str  # what each axis of the source model's input holds (preprocessing.LAYOUTS)
    layout_origin: str
    preprocessing: Preprocessing
    preprocessing_origin: str
    baked: bool
    arch: str | None
    arch_origin: str
    features: bool
    labels: list[str] | None
    source: Path
    signature_key: str
    output_key: str
    signature_input: str = "input"  # the source signature's input argument name
    rewrites: dict[str, int] = field(default_factory=dict)
    xca: XcaRecord = field(default_factory=lambda: XcaRecord(enabled=False, expected=0))  # the XCA fusion
    cache: dict = field(default_factory=dict)  # per-graph results backends share (e.g. the fp32 ONNX)
    _scratch: Path | None = field(default=None, repr=False)

    def scratch(self) -> Path:
        """A private temporary directory that lives as long as this graph: where backends keep what they
        share between targets (the fp32 ONNX model) on disk instead of in memory."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="xcit-edge-graph-"))
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
        return self._scratch

    def materialized(self, batch: int | None = None):
        """A self-contained GraphDef (weights as Consts; a copy of them), for a converter that reads one;
        `batch` fixes the input's batch size (static shapes let converters fold shape math)."""
        gd = self.frozen.materialized()
        if batch is not None and self.input_shape[0] is None:
            from tensorflow.python.framework import tensor_shape

            node = next(n for n in gd.node if n.name == _node_name(self.input_tensor))
            node.attr["shape"].shape.CopyFrom(tensor_shape.TensorShape([batch, *self.input_shape[1:]]).as_proto())
        return gd

    def io_spec(self) -> IOContract:
        """The artifact's input/output contract (what the manifest records and `validate` feeds)."""
        layout = ("NHWC", "baked: uint8 RGB NHWC") if self.baked else (self.layout, self.layout_origin)
        return IOContract(
            TensorInfo("input", self.input_dtype, tuple(_json_shape(self.input_shape)), *layout),
            TensorInfo("output", "float32", tuple(_json_shape(self.output_shape)),
                       kind="features" if self.features else "logits"))

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """Turn calibration images (preprocessed float NHWC, or uint8 NHWC when baked) into this input."""
        if self.baked:
            return images
        return to_layout(images, self.layout)

    def run(self, x: np.ndarray, batch: int = 16) -> np.ndarray:
        """The prepared graph in TensorFlow at float32: the reference every artifact is held to."""
        step = self.input_shape[0] or batch  # a fixed-batch source (onnx2tf: 1) takes exactly that many
        with GraphSession(self.frozen) as sess:
            outs = [sess([self.output_tensor], {self.input_tensor: x[i:i + step]})[0]
                    for i in range(0, len(x), step)]
        return np.concatenate(outs).astype(np.float32)


def _json_shape(shape) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def _load(path: Path, trust_model: bool = False):
    from xcit_edge.source.safety import check_ops
    from xcit_edge.util.tfimport import exact_tensorflow

    tf = exact_tensorflow()  # this graph's TF runs are the reference: no inexact grappler fusions

    for meta_graph in read_saved_model_proto(path).meta_graphs:  # one-line errors for missing / corrupt files
        check_ops(path, meta_graph, trust_model)  # before anything of it is loaded or run
    try:
        return tf.saved_model.load(str(path))
    except Exception as e:  # untrusted files: OpError, ValueError, IndexError (truncated variables), ...
        raise UsageError(f"{path}: cannot load SavedModel ({first_line(e)})") from e


def _pick_signature(loaded, path: Path, key: str | None):
    sigs = dict(loaded.signatures)
    if key:
        if key not in sigs:
            raise UsageError(f"{path}: no signature {key!r} (has: {', '.join(sigs) or 'none'})")
        return key, sigs[key]
    if "serving_default" in sigs:
        return "serving_default", sigs["serving_default"]
    if len(sigs) == 1:
        return next(iter(sigs.items()))
    raise UsageError(f"{path}: {len(sigs)} signatures ({', '.join(sigs) or 'none'}); choose one with --signature")


def _image_input(sig, path: Path) -> tuple[str, list[int | None], str]:
    import tensorflow as tf

    _, kwargs = sig.structured_input_signature
    if len(kwargs) != 1:
        raise UsageError(f"{path}: expected one image input, the signature has {len(kwargs)} ({', '.join(kwargs)})")
    name, spec = next(iter(kwargs.items()))
    shape = spec.shape.as_list() if spec.shape.rank is not None else None
    if spec.dtype != tf.float32 or shape is None or len(shape) != 4:
        raise UsageError(f"{path}: input {name!r} is {spec.dtype.name} {shape}; expected a float32 image batch")
    if shape[3] == 3 and shape[1] != 3:
        layout = "NHWC"
    elif shape[1] == 3:
        layout = "NCHW"
    else:
        raise UsageError(f"{path}: input {name!r} shape {shape} has no 3-channel axis (NHWC or NCHW)")
    hw = shape[1:3] if layout == "NHWC" else shape[2:4]
    if None in hw:
        raise UsageError(f"{path}: input {name!r} has a dynamic resolution {shape}; XCiT exports have a fixed one")
    return name, shape, layout


def _pick_output(sig, path: Path, key: str | None) -> str:
    outs = sig.structured_outputs
    if not isinstance(outs, dict) or not outs:
        raise UsageError(f"{path}: signature outputs are not named tensors")
    if key:
        if key not in outs:
            raise UsageError(f"{path}: no output {key!r} (has: {', '.join(outs)})")
        return key
    if len(outs) == 1:
        return next(iter(outs))
    if "output" in outs:
        return "output"
    rank2 = [k for k, v in outs.items() if v.shape.rank == 2]
    if len(rank2) == 1:
        return rank2[0]
    raise UsageError(f"{path}: several outputs ({', '.join(outs)}); choose one with --output-key")


def _identify(path: Path, meta: dict | None, img_size: int, out_dim: int | None, graph_def,
              allow_unknown: bool) -> tuple[str | None, str, bool]:
    """The architecture: recorded by `build`, else read from the graph's structure (`graph.structure`);
    an unidentified model is refused unless `allow_unknown`."""
    if meta:
        return meta["arch"], "recorded by xcit-edge build", bool(meta.get("features"))
    nodes = [*graph_def.node, *(n for fn in graph_def.library.function for n in fn.node_def)]
    st = structure_of(nodes, [], img_size, out_dim)
    if st.variant:
        return st.variant, f"identified from the graph: {st.describe()}", st.variant.endswith("_fe")
    if allow_unknown:
        return None, f"not identified: {st.reason} (accepted with --allow-unknown-model)", out_dim != 1000
    raise UsageError(
        f"{path}: not a recognised XCiT model ({st.reason}; input {img_size}px, output width {out_dim}); "
        "pass --allow-unknown-model to convert it anyway"
    )


def _labels(meta: dict | None, out_dim: int | None, features: bool) -> list[str] | None:
    from xcit_edge.data.calibration import imagenet_labels

    if features:
        return None
    recorded = meta.get("labels") if meta else None
    if isinstance(recorded, list) and len(recorded) == out_dim:
        return [str(v) for v in recorded]
    if out_dim == 1000 and recorded in (None, "imagenet-1k"):
        return imagenet_labels()
    return None


def _adapted(frozen: Frozen, input_tensor: str, output_tensor: str, shape: list[int | None], layout: str,
             pre: Preprocessing, bake: bool) -> Frozen:
    """The final graph: a placeholder `input` (the source's contract, or uint8 NHWC when baking, the
    normalization and layout transpose added after it) and an Identity `output`, pruned to what `output`
    needs. Edited as structure: the weights are not copied."""
    from tensorflow.core.framework import graph_pb2, types_pb2
    from tensorflow.python.framework import graph_util

    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    src = _node_name(input_tensor)
    output_tensor = _free_names(gd, {"input", "output"} - {src}, output_tensor)
    edit = _Editor(gd)
    if bake:
        perm = layout_perm(layout)
        nhwc = [shape[0], 0, 0, 3]
        for i, p in enumerate(perm):
            nhwc[p] = shape[i]
        edit.rename(src, "xcit_edge/source_input")
        x = edit.placeholder("input", types_pb2.DT_UINT8, nhwc)
        x = edit.op("xcit_edge/bake/cast", "Cast", [x], SrcT=types_pb2.DT_UINT8, DstT=types_pb2.DT_FLOAT)
        x = edit.op("xcit_edge/bake/scale", "Mul", [x, edit.const("xcit_edge/bake/scale_v", pre.scale)])
        x = edit.op("xcit_edge/bake/center", "Sub", [x, edit.const("xcit_edge/bake/mean", pre.mean)])
        inv_std = (1.0 / np.array(pre.std, np.float64)).astype(np.float32)
        x = edit.op("xcit_edge/bake/normalize", "Mul", [x, edit.const("xcit_edge/bake/inv_std", inv_std)])
        if perm != [0, 1, 2, 3]:
            x = edit.op("xcit_edge/bake/layout", "Transpose",
                        [x, edit.const("xcit_edge/bake/perm", np.array(perm, np.int32))],
                        T=types_pb2.DT_FLOAT, Tperm=types_pb2.DT_INT32)
        edit.rewire("xcit_edge/source_input", x)
    else:
        edit.rename(src, "input")
        edit.placeholder("input", types_pb2.DT_FLOAT, shape, replace=True)
    edit.op("output", "Identity", [output_tensor])
    return frozen.with_graph(graph_util.extract_sub_graph(gd, ["output"]))


def _free_names(gd, names: set[str], output_tensor: str) -> str:
    """Rename nodes that hold one of `names` (the final graph's own), so they can be used; returns the
    output tensor's name after the renames."""
    edit = _Editor(gd)
    for name in sorted(names):
        if name in edit.nodes:
            new = f"xcit_edge/renamed/{name}"
            edit.rename(name, new)
            if _node_name(output_tensor) == name:
                output_tensor = new + output_tensor[len(name):]
    return output_tensor


class _Editor:
    """Small structure edits of a GraphDef: add nodes, rename one (its readers follow), rewire readers."""

    def __init__(self, gd):
        self.gd = gd
        self.nodes = {n.name: n for n in gd.node}

    def rename(self, old: str, new: str) -> None:
        if old == new:
            return
        node = self.nodes.pop(old)
        node.name = new
        self.nodes[new] = node
        self.rewire(old, new)

    def rewire(self, old: str, new: str) -> None:
        """Every reader of node `old`'s first output (or control edge, or colocation) reads `new` instead."""
        loc, new_loc = f"loc:@{old}".encode(), f"loc:@{_node_name(new)}".encode()
        for n in self.gd.node:
            for i, inp in enumerate(n.input):
                if inp in (old, f"{old}:0"):
                    n.input[i] = new
                elif inp == f"^{old}":
                    n.input[i] = f"^{_node_name(new)}"
            if "_class" in n.attr:
                places = n.attr["_class"].list.s
                for i, place in enumerate(places):
                    if place == loc:
                        places[i] = new_loc

    def placeholder(self, name: str, dtype: int, shape: list[int | None], replace: bool = False) -> str:
        from tensorflow.python.framework import tensor_shape

        node = self.nodes[name] if replace else self._add(name, "Placeholder")
        node.attr.clear()
        node.attr["dtype"].type = dtype
        node.attr["shape"].shape.CopyFrom(tensor_shape.TensorShape(shape).as_proto())
        return name

    def const(self, name: str, value) -> str:
        from tensorflow.python.framework import tensor_util

        node = self._add(name, "Const")
        proto = tensor_util.make_tensor_proto(np.asarray(value, np.float32) if not isinstance(value, np.ndarray)
                                              else value)
        node.attr["dtype"].type = proto.dtype
        node.attr["value"].tensor.CopyFrom(proto)
        return name

    def op(self, name: str, op: str, inputs: list[str], **types) -> str:
        """A node of `op` reading `inputs`; `types` its type attributes (default: T float32)."""
        from tensorflow.core.framework import types_pb2

        node = self._add(name, op)
        node.input.extend(inputs)
        for key, value in (types or {"T": types_pb2.DT_FLOAT}).items():
            node.attr[key].type = value
        return name

    def _add(self, name: str, op: str):
        node = self.gd.node.add(name=name, op=op)
        self.nodes[name] = node
        return node


def _layout(graph_def, input_tensor: str, shape: list[int | None], by_shape: str) -> tuple[str, str]:
    """The input layout the graph really reads (`structure.input_layout`), else the one its shape suggests
    (also when the two disagree on where the 3 channels are: the shape is the signature's promise)."""
    found = input_layout(graph_def.node, _node_name(input_tensor))
    if found is None or found not in LAYOUTS or shape[found.index("C")] != 3:
        return by_shape, "from the input's shape (no path to the first convolution found)"
    if found != by_shape:
        log.info("input layout %s read from the graph (its shape suggests %s)", found, by_shape)
    return found, "read from the graph (transposes up to the first convolution)"


def _expected_xca(meta: dict | None, arch: str | None, found: int) -> tuple[int, str]:
    """How many XCA blocks the model has: its recorded or known depth, else what the graph shows."""
    from xcit_edge.model.zoo import get_config

    cfg = (meta or {}).get("config")
    depth = cfg.get("depth") if isinstance(cfg, dict) else None
    if isinstance(depth, int):
        return depth, "recorded depth"
    if arch:
        try:
            return get_config(arch).depth, f"depth of {arch}"
        except UsageError:
            pass
    return found, "XCA structures in the graph"


def _fusion(path: Path, frozen: Frozen, in_tensor: str, out_tensor: str, in_shape, meta: dict | None,
            arch: str | None, allow_partial: bool) -> tuple[Frozen, XcaRecord]:
    """Fuse every XCA; refuse (exit 1) when fewer blocks fuse than the model has."""
    frozen, report = fuse_xca(frozen, in_tensor, in_shape, out_tensor)
    expected = _expected_xca(meta, arch, report.found)
    info = _fusion_info(report, expected)
    if report.fused != expected[0]:
        why = "; ".join(sorted(set(report.skipped.values()))) or "no XCA structure matched"
        msg = f"{path}: fused {report.fused} of {expected[0]} XCA blocks ({expected[1]}): {why}"
        if not allow_partial:
            raise ConversionError(msg + "; pass --allow-partial-fusion to accept or --no-fuse to skip fusion")
        log.warning("%s (accepted: --allow-partial-fusion)", msg)
    return frozen, info


def _fusion_info(report: FusionReport | None, expected: tuple[int, str]) -> XcaRecord:
    if report is None:
        return XcaRecord(enabled=False, expected=expected[0])
    return XcaRecord(enabled=True, expected=expected[0], fused=report.fused, expected_from=expected[1],
                     found=report.found, skipped=dict(report.skipped), max_rel_err=report.max_rel_err)


PREPARE_STEPS = ("loading the SavedModel", "freezing", "canonical rewrites", "fusing XCA", "adapting the input")


def prepare(path: Path, *, signature: str | None = None, output_key: str | None = None,
            preprocessing: Preprocessing | None = None, bake_preprocessing: bool = False,
            allow_unknown: bool = False, fuse: bool = True, allow_partial_fusion: bool = False,
            trust_model: bool = False, progress=None) -> PreparedGraph:
    """The SavedModel at `path` as the one graph every backend converts from.

    Checks its ops before loading (`source.safety.check_ops`), loads and checks the signature (one image
    input, the output), freezes it, runs the canonical rewrites (`graph.rewrites`), identifies the variant,
    fuses XCA (`graph.xca`) and adapts the input (preprocessing baked in, layout).

    Args:
        path: a local SavedModel directory (untrusted).
        signature, output_key: which signature and output (default: serving_default / the only one).
        preprocessing: overrides what the SavedModel records (foreign models).
        bake_preprocessing: the graph takes uint8 RGB and normalizes inside.
        allow_unknown: accept a structure that is no known XCiT variant.
        fuse, allow_partial_fusion: fuse XCA; accept fewer fused blocks than the model has.
        trust_model: run a graph whose ops reach outside it (files, network, Python).
        progress: called as (step done, PREPARE_STEPS' length) before each step and at the end.
    Returns:
        The PreparedGraph (frozen GraphDef, its I/O, preprocessing, variant, rewrite counts, `xca` record).
    Raises:
        UsageError: not a loadable SavedModel, no image signature, refused ops, an unknown variant.
        ConversionError: fewer XCA blocks fused than the model has (without allow_partial_fusion).
    """
    path = Path(path)
    step = progress or (lambda done, total: None)
    step(0, len(PREPARE_STEPS))
    loaded = _load(path, trust_model)
    key, sig = _pick_signature(loaded, path, signature)
    in_name, in_shape, layout = _image_input(sig, path)
    out_key = _pick_output(sig, path, output_key)
    out_shape = sig.structured_outputs[out_key].shape.as_list()
    step(1, len(PREPARE_STEPS))
    fs = freeze_signature(sig)
    in_tensor, out_tensor = fs.input_tensor, fs.output_tensors[_flat_output_index(sig, out_key)]
    del loaded, sig  # the weights now live once, in fs.frozen.weights
    gc.collect()
    step(2, len(PREPARE_STEPS))
    frozen, rewrites = canonical(fs.frozen, GraphSite(in_tensor, in_shape, [_node_name(out_tensor)]))
    del fs
    layout, layout_origin = _layout(frozen.graph_def, in_tensor, in_shape, layout)
    img_size = in_shape[1 + layout[1:].index("H")]
    out_dim = out_shape[-1] if out_shape and out_shape[-1] else None
    meta = read_metadata(path)
    arch, arch_origin, features = _identify(path, meta, img_size, out_dim, frozen.graph_def, allow_unknown)
    step(3, len(PREPARE_STEPS))
    if fuse:
        frozen, xca = _fusion(path, frozen, in_tensor, out_tensor, in_shape, meta, arch, allow_partial_fusion)
    else:
        xca = _fusion_info(None, _expected_xca(meta, arch, count_structural(frozen.graph_def)))
    if preprocessing is not None:
        pre, pre_origin = preprocessing, "given on the command line"
    else:
        pre, pre_origin = preprocessing_of(path, img_size)
    if layout != "NHWC":
        pre = Preprocessing(**{**pre.to_dict(), "layout": layout, "size": tuple(pre.size)})
    step(4, len(PREPARE_STEPS))
    final = _adapted(frozen, in_tensor, out_tensor, in_shape, layout, pre, bake_preprocessing)
    step(5, len(PREPARE_STEPS))
    in_node = next(n for n in final.graph_def.node if n.name == "input")
    log.info("prepared %s (%s, signature %s, output %s; weights %.1f MB held apart from the graph)", path,
             arch or "unknown XCiT", key, out_key, final.nbytes() / 1e6)
    return PreparedGraph(
        frozen=final, input_tensor="input:0", output_tensor="output:0",
        input_shape=[None if d.size < 0 else int(d.size) for d in in_node.attr["shape"].shape.dim],
        input_dtype=_dtype_name(in_node.attr["dtype"].type), output_shape=out_shape,
        layout=layout, layout_origin=layout_origin, preprocessing=pre,
        preprocessing_origin=pre_origin, baked=bake_preprocessing, arch=arch, arch_origin=arch_origin,
        features=features, labels=_labels(meta, out_dim, features), source=path, signature_key=key,
        output_key=out_key, signature_input=in_name,
        rewrites={**rewrites, "xca_fused": xca.fused},
        xca=xca,
    )


def _dtype_name(enum: int) -> str:
    from tensorflow.python.framework import dtypes

    return dtypes.as_dtype(enum).name


def _node_name(tensor: str) -> str:
    return tensor.split(":")[0]


def _flat_output_index(sig, out_key: str) -> int:
    """Position of `out_key` among the signature's flattened outputs (dicts flatten by sorted key)."""
    return sorted(sig.structured_outputs).index(out_key)
