"""OpenVINO IR via `openvino.convert_model`, read from the optimized ONNX model (`backends/onnx/`).

Why ONNX and not the frozen TensorFlow graph OpenVINO could read directly: tf2onnx + `onnx.rewrites` give
LayerNormalization (OpenVINO's ONNX frontend makes it one MVN op), folded Dense reshapes and the GELU form
it fuses; its TensorFlow frontend left Keras's LayerNorm as 6 elementwise ops each. nano p16: 0.81x the
latency at batch 1 on 2 threads (benchmarks/peers.py, variant "read from TF"); the tests hold the artifacts
to timm as before.

The IR keeps float32 weights (`compress_to_fp16=False`) and is compiled with
INFERENCE_PRECISION_HINT from the spec (f32 by default: the CPU plugin otherwise picks bf16
on CPUs that have it, which is a different model numerically). `nncf` targets are
post-training quantized with NNCF (`nncf.quantize`, transformer model type).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path

import numpy as np

from xcit_edge.backends import onnx as onnx_backend
from xcit_edge.backends import register
from xcit_edge.backends.base import FLOAT, Calibration, Conversion, QuantMode, op_counts, step, zeros_input
from xcit_edge.errors import ConversionError, UsageError, first_line
from xcit_edge.graph.xca_names import block_exits, count_blocks
from xcit_edge.util.batching import in_batches

log = logging.getLogger(__name__)


def to_openvino(graph, batch: int | None = None, opset: int = onnx_backend.DEFAULT_OPSET):
    """The IR of the prepared graph, read from the ONNX backend's optimized model at `opset` (a spec's
    `onnx_opset`); `batch` fixes the batch size (static shapes)."""
    import openvino as ov

    onnx_model, _ = onnx_backend.optimized_onnx(graph, opset)
    step("OpenVINO conversion")
    try:
        model = ov.convert_model(io.BytesIO(onnx_model.SerializeToString()))
        if batch is not None:
            shape = model.inputs[0].get_partial_shape()
            shape[0] = batch
            model.reshape({model.inputs[0]: shape})
    except Exception as e:  # OpConversionFailure and friends carry multi-page messages
        raise ConversionError(f"OpenVINO conversion failed: {first_line(e)}") from e
    model.inputs[0].get_tensor().set_names({"input"})
    model.outputs[0].get_tensor().set_names({"output"})
    return model


def _ignored_scope(spec) -> dict:
    """nncf's `ignored_scope` for the spec's keep_float op types. validate=False: a type the IR does not
    have is no error (ScaledDotProductAttention exists only where OpenVINO fused the attention)."""
    import nncf

    keep = list(spec.quantization.get("keep_float", []))
    return {"ignored_scope": nncf.IgnoredScope(types=keep, validate=False)} if keep else {}


def _nncf_quantize(model, calib: np.ndarray, spec):
    import nncf

    kwargs = _ignored_scope(spec)
    step("NNCF quantization")
    with nncf_off_stdout():
        return nncf.quantize(model, nncf.Dataset(Calibration(list(calib[:, None]))),
                             model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib), **kwargs)


@contextlib.contextmanager
def nncf_off_stdout():
    """Keep NNCF off stdout, which belongs to `--json`: its progress bars go to the debug log, and its log
    records (INFO lines such as "2 ignored nodes were found") through this process's logging (stderr; its
    INFO lines with -vv) instead of the handler NNCF puts, at INFO, on the sys.stdout it found when imported."""
    logger = logging.getLogger("nncf")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers, logger.propagate = [], True
    logger.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as captured:
            yield
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
        log.debug("nncf: %s", captured.getvalue())


def float_ops(model) -> list[str]:
    """MatMul/convolution ops whose activation input has no FakeQuantize: they compute in float."""
    def quantized(op) -> bool:
        return "FakeQuantize" in {op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())}

    return op_counts(op.get_type_name() for op in model.get_ops()
                     if op.get_type_name() in ("MatMul", "Convolution", "GroupConvolution") and not quantized(op))


def convert(graph, spec, calib: np.ndarray | None, workdir: Path) -> Conversion:
    # int8 IRs get a static batch of 1: with a dynamic batch the CPU plugin's low-precision
    # transformations fail on the class-attention reshape (ReshapeTransformation, OpenVINO 2026.4:
    # measured on nano).
    model = to_openvino(graph, batch=1 if spec.mode == "nncf" else None, opset=_opset(spec))
    if spec.mode == "nncf":
        if calib is None or not len(calib):
            raise UsageError(f"{spec.name} needs calibration data (--calibration)")
        model = _nncf_quantize(model, calib, spec)
    return _save(model, spec, workdir)


def convert_within_drop(graph, spec, calib: np.ndarray, targets: np.ndarray, max_drop: float,
                        workdir: Path) -> Conversion:
    """`convert --max-drop` for NNCF targets: `nncf.quantize_with_accuracy_control` quantizes, then
    reverts the quantized layers that cost most accuracy to float until the top-1 accuracy on
    (`calib`, `targets`) is within `max_drop` points of the float model's (NNCF ranks and reverts)."""
    import nncf

    model = to_openvino(graph, batch=1, opset=_opset(spec))

    def top1(compiled, items) -> float:
        return float(np.mean([int(np.argmax(compiled(x)[0]) == t) for x, t in items]))

    kwargs = _ignored_scope(spec)
    data = list(calib[:, None])
    with nncf_off_stdout():
        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(data), nncf.Dataset(list(zip(data, targets, strict=True)), lambda item: item[0]),
            top1, max_drop=max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calib), **kwargs)
    return _save(quantized, spec, workdir)


def _save(model, spec, workdir: Path) -> Conversion:
    import openvino as ov

    kept = float_ops(model) if spec.mode == "nncf" else []
    xml = workdir / spec.file
    ov.save_model(model, str(xml), compress_to_fp16=False)
    ops = sorted({op.get_type_name() for op in model.get_ops()})
    blocks = count_blocks(op.get_friendly_name() for op in model.get_ops())
    return Conversion([spec.file, xml.with_suffix(".bin").name], kept, {"ops": ops, "xca_blocks": blocks})


def load(path: Path, spec=None, threads: int | None = None):
    """Compiled for CPU with the target's inference precision and performance hint (LATENCY: one stream,
    what a single synchronous request wants). threads: INFERENCE_NUM_THREADS."""
    import openvino as ov

    options = spec.options if spec else {}
    config = {"INFERENCE_PRECISION_HINT": options.get("inference_precision", "f32"),
              "PERFORMANCE_HINT": options.get("performance_hint", "LATENCY")}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(path), "CPU", config)


def _fixed_batch(compiled) -> int | None:
    fixed = compiled.inputs[0].get_partial_shape()[0]
    return fixed.get_length() if fixed.is_static else None


def run(compiled, x: np.ndarray) -> np.ndarray:
    req = compiled.create_infer_request()
    (out,) = in_batches(lambda part: [req.infer({0: part})[compiled.outputs[0]].copy()], x, _fixed_batch(compiled))
    return out.astype(np.float32)


def block_outputs(path: Path, spec, x: np.ndarray) -> dict[int, np.ndarray]:
    """The output of every fused XCA block for inputs `x` (`validate`'s localization): the op output
    leaving each block (friendly names `xcit_edge/xca_i/...`) becomes an extra model output."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    def key(out) -> str:
        return f"{out.get_node().get_friendly_name()}:{out.get_index()}"

    ops, by_key = [], {}
    for op in model.get_ordered_ops():
        outs = list(op.outputs())
        by_key.update({key(o): o for o in outs})
        # NNCF's SmoothQuant scales a block's output per channel (folded into the next weights) under a
        # name inside the block: that Multiply is the next layer's, or blocks would compare scaled values
        name = "" if "nncf_smooth_quant" in op.get_friendly_name() else op.get_friendly_name()
        ops.append((name, op.get_type_name(), [key(i.get_source_output()) for i in op.inputs()],
                    [key(o) for o in outs]))
    ports = {b: by_key[k] for b, k in block_exits(ops, frozenset({"FakeQuantize", "Convert"})).items()}
    model.add_outputs(list(ports.values()))
    precision = spec.options.get("inference_precision", "f32") if spec else "f32"
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    req = compiled.create_infer_request()

    def infer(part: np.ndarray) -> list[np.ndarray]:
        res = req.infer({0: part})
        return [res[compiled.outputs[1 + k]].copy() for k in range(len(ports))]

    outs = in_batches(infer, x, _fixed_batch(compiled))
    return {b: v.astype(np.float32) for b, v in sorted(zip(ports, outs, strict=True))}


def _opset(spec) -> int:
    return int(spec.options.get("onnx_opset", onnx_backend.DEFAULT_OPSET))


def run_defaults(path: Path) -> dict:
    """One run of `path` compiled for CPU with OpenVINO's default options (what an app gets)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    shape = [d.get_length() if d.is_static else 1 for d in compiled.inputs[0].get_partial_shape()]
    dtype = compiled.inputs[0].get_element_type().to_dtype()
    compiled.create_infer_request().infer({0: zeros_input(shape, dtype)})
    return {}


def quantized_layers(graph, spec) -> list[str]:
    """No layer selection here: NNCF's accuracy control (`convert_within_drop`) chooses what stays float."""
    return []


def describe(path: Path, graph) -> None:
    """OpenVINO IR carries no app metadata beyond the manifest."""
    return None


NAME = "openvino"
RUNTIME_MODULE = "openvino"
DISTRIBUTIONS = ("openvino", "nncf")
MODES = (FLOAT, QuantMode("nncf", integer=True, calibrated=True))
# peak growth of `convert` per SavedModel byte, fitted (rounded up) to small_12, medium_24 and large_24
# (README "Memory estimate"): the ONNX model OpenVINO reads, its IR and the compiled check model
CONVERT_MEMORY_FACTOR = 9.0
RUN_OPTIONS = ()
register(sys.modules[__name__])
