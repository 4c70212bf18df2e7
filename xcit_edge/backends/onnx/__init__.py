"""ONNX via tf2onnx from the frozen GraphDef (`onnx/export.py`); checked with `onnx.checker`, run in ONNX Runtime.

Float targets with `optimize = true` get `onnx/rewrites/`'s rewrites (LayerNormalization,
Tensordot folding, GELU in the form ONNX Runtime fuses), each verified on a probe input.
Fused XCA blocks (`graph/xca.py`) are packaged as `xcit_edge.XCA` function nodes
(`onnx/functions.py`) unless the spec says `inline_functions` (`convert --inline-functions`).
Quantized targets keep the blocks inlined: the quantizer has to see (and wrap) their ops.

`dynamic` targets quantize the *optimized* float model (its LayerNormalization and GELU fusions and
XCA function nodes kept) with ONNX Runtime's dynamic quantizer: int8 weights per channel on the op types
in the spec's `ops` (MatMul by default), activations quantized per image at run time (no calibration);
ONNX Runtime fuses each DynamicQuantizeLinear + MatMulInteger pair into one int8 kernel. `reduce_range`
(7-bit weights) keeps the u8 x s8 products of CPUs without VNNI from saturating their 16-bit sums.

`qdq-static` targets are quantized by ONNX Runtime's static QDQ quantizer (per-channel
int8 weights, int8 activations) with the calibration images on the unoptimized graph; op types listed
in the spec's `keep_float` are excluded (`op_types_to_quantize` = all others).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np

from xcit_edge.backends import register
from xcit_edge.backends.base import FLOAT, Calibration, Conversion, QuantMode, op_counts, step, zeros_input
from xcit_edge.backends.onnx.export import tf_to_onnx
from xcit_edge.backends.onnx.functions import count_xca, package_xca
from xcit_edge.backends.onnx.index import OnnxIndex
from xcit_edge.backends.onnx.rewrites import optimize
from xcit_edge.errors import ConversionError, first_line
from xcit_edge.util.batching import in_batches

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # LayerNormalization (what `rewrites` fuses LayerNorms into) needs opset 17


def to_onnx(graph, opset: int):
    """The prepared graph as a checked ONNX ModelProto (float32), converted once per graph and opset and
    kept on disk (`graph.scratch()`) between targets: onnx, onnx-int8 and OpenVINO start from the same model."""
    import onnx

    return onnx.load(str(_onnx_file(graph, opset)))


def _onnx_file(graph, opset: int) -> Path:
    def make():
        step("tf2onnx")
        return tf_to_onnx(graph, opset)

    return _shared_file(graph, ("onnx", opset), make)


def optimized_onnx(graph, opset: int, skip: tuple[str, ...] = ()) -> tuple[object, dict]:
    """`to_onnx` with `onnx.rewrites`'s rewrites (but `skip`), XCA blocks inlined; computed once per graph
    (the `onnx` target and the OpenVINO targets, which are read from it, share it)."""
    import onnx

    key = ("onnx-optimized", opset, tuple(skip))
    if key not in graph.cache:
        rewrites = {}

        def make():
            model = to_onnx(graph, opset)
            step("ONNX rewrites")
            model, counts = optimize(model, tuple(skip), original=lambda: to_onnx(graph, opset))
            rewrites.update(counts)
            return model

        _shared_file(graph, key, make)
        graph.cache[(*key, "rewrites")] = rewrites
    return onnx.load(str(graph.cache[key])), dict(graph.cache[(*key, "rewrites")])


def _shared_file(graph, key: tuple, make) -> Path:
    """The ModelProto `make()` returns, checked and saved once per graph under `key` (its path cached)."""
    import onnx

    if key not in graph.cache:
        path = graph.scratch() / ("-".join(str(k) for k in key) + ".onnx")
        model = make()
        log.debug("%s: saving", key[0])
        onnx.save(model, str(path))
        del model
        step("ONNX checker")
        try:  # from the file: no second copy of the model in this process
            onnx.checker.check_model(str(path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ConversionError(f"tf2onnx produced an invalid ONNX model ({key[0]}): {first_line(e)}") from e
        graph.cache[key] = path
    return graph.cache[key]


class _Reader:
    """ONNX Runtime CalibrationDataReader over a numpy batch, one image at a time."""

    def __init__(self, x: np.ndarray):
        self._it = iter(Calibration(x))

    def get_next(self):
        item = next(self._it, None)
        return None if item is None else {"input": item[None]}



def float_ops(model) -> list[str]:
    """Op types (with counts) computing in float: in QDQ form a node runs in int8 only when a
    DequantizeLinear feeds it and a QuantizeLinear takes its output (ONNX Runtime fuses that)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_inputs = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return op_counts(n.op_type for n in model.graph.node
                     if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant")
                     and not (dq_outputs & set(n.input) and q_inputs & set(n.output)))


def _quantize_qdq(src: Path, dst: Path, calib: np.ndarray, spec) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    keep = set(spec.quantization.get("keep_float", []))
    keep_nodes = list(spec.quantization.get("keep_nodes", []))  # convert --max-drop's choice of nodes
    step("ONNX Runtime pre-processing")
    pre = _preprocessed(src)
    op_types = sorted({n.op_type for n in onnx.load(str(pre)).graph.node} - keep)
    step("ONNX Runtime static quantization")
    quantize_static(
        str(pre), str(dst), _Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
        nodes_to_exclude=keep_nodes, calibrate_method=CalibrationMethod.MinMax,
        # not CalibMaxIntermediateOutputs (bounded memory): up to ORT 1.32 it clears each full buffer without
        # computing its ranges, keeping only the last partial chunk (microsoft/onnxruntime#18893, fix PR #32577)
    )
    pre.unlink()
    model = onnx.load(str(dst))
    if unwrapped := _unwrap_float_ops(model, keep, set(keep_nodes)):
        log.info("%s: %d excluded nodes unwrapped from their output QDQ pair", spec.name, unwrapped)
        onnx.save(model, str(dst))


def _preprocessed(src: Path) -> Path:
    """ONNX Runtime's quantization pre-processing (shape inference, graph cleanup) beside `src`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = src.with_name(src.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    return pre


def quantized_layers(graph, spec) -> list[str]:
    """The nodes a `dynamic` spec quantizes (names, graph order): what `convert --max-drop` can give back
    to float (`nodes_to_exclude`)."""
    if spec.mode != "dynamic":
        return []
    model, _, _ = _float_model(graph, spec, int(spec.options.get("opset", DEFAULT_OPSET)))
    wanted = set(dynamic_settings(spec)["op_types_to_quantize"])
    return [n.name for n in model.graph.node if n.op_type in wanted]


def _unwrap_float_ops(model, keep: set[str], keep_nodes: frozenset[str] | set[str] = frozenset()) -> int:
    """Drop the Quantize/Dequantize pair after every node of a `keep` op type (or named in `keep_nodes`).

    ORT's QDQ quantizer leaves an excluded node unquantized but still wraps it when its
    neighbours are quantized (DQ -> node -> Q), and ONNX Runtime then fuses that into the
    int8 kernel anyway: the LayerNorm means of 24-layer XCiTs become QLinearGlobalAveragePool,
    which fails at run time ("parameter out of computation range"; measured on tiny_24 and a
    24-layer test model). Feeding the node's float output straight to its consumers breaks
    the pattern, so the node really runs in float.
    """
    nodes = list(model.graph.node)
    consumers = OnnxIndex(model).consumers
    drop, done = set(), 0
    for n in nodes:
        if n.op_type not in keep and n.name not in keep_nodes:
            continue
        for out in n.output:
            for q in [c for c in consumers.get(out, []) if c.op_type == "QuantizeLinear"]:
                dqs = consumers.get(q.output[0], [])
                if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
                    continue
                for dq in dqs:
                    for c in consumers.get(dq.output[0], []):
                        c.input[:] = [out if i == dq.output[0] else i for i in c.input]
                    for go in model.graph.output:
                        if go.name == dq.output[0]:
                            go.name = out
                    drop.add(id(dq))
                drop.add(id(q))
                done += 1
    if drop:
        kept = [n for n in nodes if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return done


def dynamic_settings(spec) -> dict:
    """ONNX Runtime `quantize_dynamic` arguments of a `dynamic` spec (also recorded in the manifest)."""
    q = spec.quantization
    return {"op_types_to_quantize": list(q.get("ops", ["MatMul"])), "per_channel": bool(q.get("per_channel", True)),
            "reduce_range": bool(q.get("reduce_range", True)), "weight_type": "QInt8",
            "nodes_to_exclude": list(q.get("keep_nodes", []))}


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """ONNX Runtime's quantizer advises `quant_pre_process` on the root logger; the model given to it is
    already the optimized one (pre-processing would only repeat shape inference and fusions)."""
    return "pre-processing before quantization" not in record.getMessage()


def _quantize_dynamic(src: Path, dst: Path, spec) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = dynamic_settings(spec)
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    step("ONNX Runtime dynamic quantization")
    try:
        quantize_dynamic(str(src), str(dst), **{**settings, "weight_type": QuantType.QInt8})
    finally:
        root.removeFilter(_no_preprocessing_advice)
    return {"library": "onnxruntime.quantization", "method": "quantize_dynamic", **settings}


def unquantized_matmuls(model) -> list[str]:
    """Op types (with counts) of the matrix products left in float: MatMul/Gemm/Conv outside XCA functions
    (the activation x activation products inside XCA stay float by design)."""
    return op_counts(n.op_type for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv"))


def _float_model(graph, spec, opset: int) -> tuple[object, str, dict]:
    """The float ONNX model a float or dynamic target ships (optimized, XCA as function nodes unless inlined)."""
    if spec.options.get("optimize", False):
        # optimize_skip: rewrites left out (benchmarks/peers.py measures each one off)
        details = {}
        model, details["rewrites"] = optimized_onnx(graph, opset, tuple(spec.options.get("optimize_skip", ())))
    else:
        model, details = to_onnx(graph, opset), {}
    form = "inlined"
    if not spec.options.get("inline_functions"):
        model, packaged = package_xca(model)
        form = "function" if packaged else form
    return model, form, details


def _check_file(path: Path) -> None:
    """`onnx.checker` on a saved model, reading the file (the caller has dropped its in-memory copy)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def convert(graph, spec, calib: np.ndarray | None, workdir: Path) -> Conversion:
    import onnx

    opset = int(spec.options.get("opset", DEFAULT_OPSET))
    out = workdir / spec.file
    kept: list[str] = []
    if spec.mode == "qdq-static":
        form, details = "inlined", {}
        fp32 = workdir / "fp32.onnx"
        shutil.copyfile(_onnx_file(graph, opset), fp32)
        _quantize_qdq(fp32, out, calib, spec)
        fp32.unlink()
        kept = float_ops(onnx.load(str(out)))
    else:
        model, form, details = _float_model(graph, spec, opset)
        if spec.mode == "dynamic":
            fp32 = workdir / "fp32.onnx"
            onnx.save(model, str(fp32))
            del model
            _check_file(fp32)
            details["quantizer"] = _quantize_dynamic(fp32, out, spec)
            fp32.unlink()
        else:
            onnx.save(model, str(out))
            del model
            _check_file(out)
    saved = onnx.load(str(out))
    if spec.mode == "dynamic":
        kept = unquantized_matmuls(saved)
    ops = sorted({n.op_type for n in saved.graph.node})
    return Conversion([spec.file], kept, {"opset": opset, "ops": ops, "xca_blocks": count_xca(saved),
                                          "xca_form": form, **details})


def load(path: Path, spec=None, threads: int | None = None):
    """An ONNX Runtime CPU session. threads: intra-op threads; with a count given, idle workers block instead
    of spinning, so other work in the process (another runtime taking its turn in `bench`) is not slowed."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _batches(session, x: np.ndarray, fetches: list[str] | None) -> list[np.ndarray]:
    """`fetches` (None: the outputs) for `x`, fed whole or in the session's fixed batch, joined on axis 0."""
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    return in_batches(lambda part: session.run(fetches, {name: part}), x,
                      fixed if isinstance(fixed, int) and fixed > 0 else None)


def run(session, x: np.ndarray) -> np.ndarray:
    return _batches(session, x, None)[0].astype(np.float32)


def block_outputs(path: Path, spec, x: np.ndarray) -> dict[int, np.ndarray]:
    """The output of every fused XCA block for inputs `x` (`validate`'s localization): each block's
    output tensor (an `XCA` call's output, or the tensor leaving an inlined block) becomes an extra
    graph output of an in-memory copy, run in ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    tensors = _block_tensors(model)
    for name in tensors.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = _batches(session, x, list(tensors.values()))
    return dict(zip(tensors, outs, strict=True))


def _block_tensors(model) -> dict[int, str]:
    from xcit_edge.backends.onnx.functions import DOMAIN, OP_TYPE
    from xcit_edge.graph.xca_names import block_exits

    def name(n) -> str:  # an XCA call is named `xcit_edge/xca_i`: the whole block in one node
        return f"{n.name}/" if n.op_type == OP_TYPE and n.domain == DOMAIN else n.name

    ops = [(name(n), n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    return block_exits(ops, frozenset({"QuantizeLinear", "DequantizeLinear"}))


def run_defaults(path: Path) -> dict:
    """One run of `path` in an ONNX Runtime session with default options (what an app gets)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32  # uint8: preprocessing baked in
    session.run(None, {inp.name: zeros_input(inp.shape, dtype)})
    return {}


def describe(path: Path, graph) -> None:
    """ONNX artifacts carry no app metadata beyond the manifest."""
    return None


NAME = "onnx"
RUNTIME_MODULE = "onnxruntime"
DISTRIBUTIONS = ("onnxruntime", "tf2onnx", "onnx")
MODES = (FLOAT, QuantMode("qdq-static", integer=True, calibrated=True), QuantMode("dynamic", integer=True))
# peak growth of `convert` per SavedModel byte, fitted (rounded up) to small_12, medium_24 and large_24
# (README "Memory estimate"): tf2onnx's parsed graph, the ONNX model, its rewrites and ONNX Runtime's check session
CONVERT_MEMORY_FACTOR = 7.0
RUN_OPTIONS = ("inline_functions",)
convert_within_drop = None
register(sys.modules[__name__])
