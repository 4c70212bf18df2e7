"""Load one signature of a SavedModel, check it is an XCiT image model, freeze and adapt it.

Why freeze: the TFLite converter silently drops the weights of our Keras-3 SavedModels
(`from_saved_model` gives a 531 KB model that outputs NaN; measured), and tf2onnx and
OpenVINO read a constant-only GraphDef most reliably. After `convert_variables_to_constants_v2`
every weight is a `Const`, whatever wrote the SavedModel (Keras, `tf.Module`, onnx2tf, onnx-tf).

The prepared function always has one input called `input` and one output; with
`bake_preprocessing` the input becomes uint8 RGB NHWC and the normalization (and an NCHW
transpose for channels-first sources) runs inside the graph.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xcit_edge.data.preprocessing import LAYOUTS, Preprocessing, layout_perm, to_layout
from xcit_edge.errors import ConversionError, UsageError, first_line
from xcit_edge.graph.rewrites import GraphSite, canonical
from xcit_edge.graph.structure import input_layout, structure_of
from xcit_edge.graph.xca import FusionReport, count_structural, fuse_xca
from xcit_edge.model.savedmodel import preprocessing_of, read_metadata
from xcit_edge.records import IOContract, TensorInfo, XcaRecord
from xcit_edge.source.inspect import read_saved_model_proto

log = logging.getLogger(__name__)


@dataclass
class PreparedGraph:
    """A frozen, canonical, single-input single-output model every backend converts from."""

    fn: object  # tf ConcreteFunction, constants only
    graph_def: object
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
    factory: object = None  # batch -> frozen ConcreteFunction with that fixed batch size
    cache: dict = field(default_factory=dict)  # per-graph results backends share (e.g. the fp32 ONNX)

    def fixed_batch(self, batch: int = 1):
        """The same function traced for a fixed batch: static shapes let converters fold shape math."""
        if self.input_shape[0] == batch or self.factory is None:
            return self.fn
        return self.factory(batch)

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
        import tensorflow as tf

        step = self.input_shape[0] or batch  # a fixed-batch source (onnx2tf: 1) takes exactly that many
        outs = [self.fn(tf.constant(x[i:i + step]))[0].numpy() for i in range(0, len(x), step)]
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


def _inner_function(graph_def, input_tensor: str, output_tensor: str):
    import tensorflow as tf

    def _imports():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_imports, [])
    g = wrapped.graph
    return wrapped.prune(g.get_tensor_by_name(input_tensor), g.get_tensor_by_name(output_tensor))


def _adapted(inner, shape: list[int | None], layout: str, pre: Preprocessing, bake: bool):
    """The final function: input `input` (source contract, or uint8 NHWC when baking)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    if bake:
        perm = layout_perm(layout)
        nhwc = [shape[0], 0, 0, 3]
        for i, p in enumerate(perm):
            nhwc[p] = shape[i]
        spec = tf.TensorSpec(nhwc, tf.uint8, name="input")
        scale = np.array(pre.scale, np.float32)
        mean = np.array(pre.mean, np.float32)
        inv_std = (1.0 / np.array(pre.std, np.float64)).astype(np.float32)

        def body(x):
            x = (tf.cast(x, tf.float32) * scale - mean) * inv_std
            return x if perm == [0, 1, 2, 3] else tf.transpose(x, perm)
    else:
        spec = tf.TensorSpec(shape, tf.float32, name="input")

        def body(x):
            return x

    @tf.function(input_signature=[spec], autograph=False)
    def serve(input):  # noqa: A002 - the argument name becomes the artifacts' input name
        return tf.identity(inner(body(input)), name="output")

    return convert_variables_to_constants_v2(serve.get_concrete_function())


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


def _fusion(path: Path, gd, frozen, out_tensor: str, in_shape, meta: dict | None, arch: str | None,
            allow_partial: bool):
    """Fuse every XCA; refuse (exit 1) when fewer blocks fuse than the model has."""
    gd, report = fuse_xca(gd, frozen.inputs[0].name, in_shape, out_tensor)
    expected = _expected_xca(meta, arch, report.found)
    info = _fusion_info(report, expected)
    if report.fused != expected[0]:
        why = "; ".join(sorted(set(report.skipped.values()))) or "no XCA structure matched"
        msg = f"{path}: fused {report.fused} of {expected[0]} XCA blocks ({expected[1]}): {why}"
        if not allow_partial:
            raise ConversionError(msg + "; pass --allow-partial-fusion to accept or --no-fuse to skip fusion")
        log.warning("%s (accepted: --allow-partial-fusion)", msg)
    return gd, info


def _fusion_info(report: FusionReport | None, expected: tuple[int, str]) -> XcaRecord:
    if report is None:
        return XcaRecord(enabled=False, expected=expected[0])
    return XcaRecord(enabled=True, expected=expected[0], fused=report.fused, expected_from=expected[1],
                     found=report.found, skipped=dict(report.skipped), max_rel_err=report.max_rel_err)


def prepare(path: Path, *, signature: str | None = None, output_key: str | None = None,
            preprocessing: Preprocessing | None = None, bake_preprocessing: bool = False,
            allow_unknown: bool = False, fuse: bool = True, allow_partial_fusion: bool = False,
            trust_model: bool = False) -> PreparedGraph:
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
    Returns:
        The PreparedGraph (frozen GraphDef, its I/O, preprocessing, variant, rewrite counts, `xca` record).
    Raises:
        UsageError: not a loadable SavedModel, no image signature, refused ops, an unknown variant.
        ConversionError: fewer XCA blocks fused than the model has (without allow_partial_fusion).
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    path = Path(path)
    loaded = _load(path, trust_model)
    key, sig = _pick_signature(loaded, path, signature)
    in_name, in_shape, layout = _image_input(sig, path)
    out_key = _pick_output(sig, path, output_key)
    frozen = convert_variables_to_constants_v2(sig)
    out_tensor = frozen.outputs[_flat_output_index(sig, out_key)].name
    gd, rewrites = canonical(frozen.graph.as_graph_def(), GraphSite(frozen.inputs[0].name, in_shape,
                                                                    [_node_name(out_tensor)]))
    layout, layout_origin = _layout(gd, frozen.inputs[0].name, in_shape, layout)
    out_shape = sig.structured_outputs[out_key].shape.as_list()
    img_size = in_shape[1 + layout[1:].index("H")]
    out_dim = out_shape[-1] if out_shape and out_shape[-1] else None
    meta = read_metadata(path)
    arch, arch_origin, features = _identify(path, meta, img_size, out_dim, gd, allow_unknown)
    if fuse:
        gd, xca = _fusion(path, gd, frozen, out_tensor, in_shape, meta, arch, allow_partial_fusion)
    else:
        xca = _fusion_info(None, _expected_xca(meta, arch, count_structural(gd)))
    inner = _inner_function(gd, frozen.inputs[0].name, out_tensor)
    del loaded, sig, frozen, gd  # before the adapted copy is made: a peak of ten model copies fewer
    gc.collect()
    if preprocessing is not None:
        pre, pre_origin = preprocessing, "given on the command line"
    else:
        pre, pre_origin = preprocessing_of(path, img_size)
    if layout != "NHWC":
        pre = Preprocessing(**{**pre.to_dict(), "layout": layout, "size": tuple(pre.size)})
    fn = _adapted(inner, in_shape, layout, pre, bake_preprocessing)

    def factory(batch: int):
        return _adapted(inner, [batch, *in_shape[1:]], layout, pre, bake_preprocessing)

    final_gd = fn.graph.as_graph_def()
    in_spec = fn.inputs[0]
    log.info("prepared %s (%s, signature %s, output %s)", path, arch or "unknown XCiT", key, out_key)
    return PreparedGraph(
        fn=fn, graph_def=final_gd, input_tensor=in_spec.name, output_tensor=fn.outputs[0].name,
        input_shape=in_spec.shape.as_list(), input_dtype=in_spec.dtype.name,
        output_shape=fn.outputs[0].shape.as_list(), layout=layout, layout_origin=layout_origin, preprocessing=pre,
        preprocessing_origin=pre_origin, baked=bake_preprocessing, arch=arch, arch_origin=arch_origin,
        features=features, labels=_labels(meta, out_dim, features), source=path, signature_key=key,
        output_key=out_key, signature_input=in_name,
        rewrites={**rewrites, "xca_fused": xca.fused},
        xca=xca,
        factory=factory,
    )


def _node_name(tensor: str) -> str:
    return tensor.split(":")[0]


def _flat_output_index(sig, out_key: str) -> int:
    """Position of `out_key` among the signature's flattened outputs (dicts flatten by sorted key)."""
    return sorted(sig.structured_outputs).index(out_key)
