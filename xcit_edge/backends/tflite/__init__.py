"""LiteRT/TFLite via TFLite's GraphDef converter on the frozen graph at batch 1.

Builtin ops only (no Flex / Select-TF ops: stock LiteRT runs every artifact), batch 1 (what
on-device apps and MediaPipe run; with a dynamic batch the int8 model kept runtime shape
arithmetic that XNNPACK refused to prepare: measured). Modes:
* `fp16-weights`: float16 weights, float32 compute;
* `full-integer`: int8 weights and activations with float32 I/O; op types in `keep_float`
  (and layers in `keep_nodes`) stay float
  through TFLite's selective quantization (the quantization debugger's `denylisted_ops` /
  `denylisted_nodes`, the documented way to skip ops);
* `int16x8`: int16 activations, int8 weights (TFLite's 16x8 mode);
* `aeq-static`, `aeq-dynamic`: Google's LiteRT quantizer (`ai-edge-quantizer`) on the float model,
  for the op types in the spec's `ops` (the rest stays float): static int8 (weights per channel,
  activations per tensor from calibration ranges) or dynamic (int8 weights; XNNPACK quantizes
  the activations per image, its qd8 kernels: no calibration). Layers in `keep_nodes` (tensor
  names) get its `no_quantize` rule. The recipe it ran is recorded in the manifest (the rule for the
  tensors `tflite/int16.py` adds, one name alternation, as counts: `int16_tensors`, `whole_range_tensors`).
* `aeq-full`: every op integer, for NPUs: input, output and activations with `activation_bits`
  (8, or 16: LiteRT's 16x8 scheme), int16 activations for the layers matching the spec's
  `int16_layers` regexes and, with `int16_layernorms` / `int16_class_attention`, for the tensors
  `tflite/int16.py` finds by structure (where int8 cannot hold the range; LayerNorm internals then
  calibrated over the whole set's range), int8 weights per channel. The float model first gets the
  exact rewrites of `tflite/rewrite.py` (ops ai-edge-quantizer has no integer form for) and, with
  `equalize_layernorms`, `tflite/equalize.py`'s LayerNorm channel equalization on the first calibration
  images (exact in float, checked); a converted model with any float op left fails the target.
What really stayed float is read back from the converted model, not assumed.

Every artifact carries a `serving_default` signature (input `input`, output `output`): LiteRT's
signature runner and ai-edge-quantizer's calibrator address the model through it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from xcit_edge.backends import register
from xcit_edge.backends.base import FLOAT, Calibration, Conversion, QuantMode, op_counts, step, zeros_input
from xcit_edge.backends.tflite import equalize as tflite_equalize
from xcit_edge.backends.tflite import int16 as tflite_int16
from xcit_edge.backends.tflite import rewrite as tflite_rewrite
from xcit_edge.errors import ConversionError, UsageError, XcitEdgeError, first_line
from xcit_edge.graph.xca_names import block_exits, count_blocks

log = logging.getLogger(__name__)


AEQ_MODES = ("aeq-static", "aeq-dynamic", "aeq-full")
AEQ_OPS = ["FULLY_CONNECTED", "CONV_2D"]  # what an aeq spec quantizes when it names no `ops`
SIGNATURE = "serving_default"


def _dataset(calib: np.ndarray):
    def gen():
        for item in Calibration(calib):
            yield [item[None].astype(calib.dtype)]

    return gen


def _new_converter(graph):
    """TFLite's converter over the graph at batch 1, from its self-contained GraphDef (TFLite's GraphDef entry
    point, `tf.compat.v1.lite.TFLiteConverter`): `from_concrete_functions` would first import the graph as a
    function and freeze and inline it again, copies that took the float conversion of xcit_small_12 from
    1.9 to 3.0 GiB peak and 8 to 20 s (measured, the same flatbuffer ops and outputs)."""
    import tensorflow as tf

    node = graph.input_tensor.split(":")[0]
    return tf.compat.v1.lite.TFLiteConverter(
        graph.materialized(1), None, None, input_arrays_with_shape=[(node, [1, *graph.input_shape[1:]])],
        output_arrays=[graph.output_tensor.split(":")[0]])


def _converter(graph, spec, calib: np.ndarray | None):
    import tensorflow as tf

    conv = _new_converter(graph)
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    conv.target_spec.supported_ops = [builtins]
    if spec.mode == "fp16-weights":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif spec.mode in ("full-integer", "int16x8"):
        if calib is None or not len(calib):
            raise UsageError(f"{spec.name} needs calibration data (--calibration)")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = _dataset(calib)
        first = (tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if spec.mode == "full-integer"
                 else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8)
        conv.target_spec.supported_ops = [first, builtins]  # builtins: float fallback for denylisted ops
    return conv


def _quantize_selectively(conv, calib: np.ndarray, keep: list[str], keep_nodes: list[str]) -> bytes:
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=keep, denylisted_nodes=keep_nodes)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=_dataset(calib), debug_options=options)
    return debugger.get_nondebug_quantized_model()


def float_ops(model_path: Path) -> list[str]:
    """Op types (with counts) computing in float in the converted model, e.g. `SOFTMAX x14`.

    An op computes in float when its output is a float tensor (quantized ops output int8/int16);
    DEQUANTIZE is the edge back to float and not counted.
    """
    interp = _interpreter(model_path, delegates=False)
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    return op_counts(op["op_name"] for op in interp._get_ops_details()
                     if op["op_name"] != "DEQUANTIZE" and any(dtypes.get(i) in (np.float32, np.float16)
                                                              for i in op["outputs"]))


def op_types(model_path: Path) -> list[str]:
    interp = _interpreter(model_path, delegates=False)
    return sorted({op["op_name"] for op in interp._get_ops_details()})


def with_signature(data: bytes) -> bytes:
    """The flatbuffer with one `serving_default` signature over its first subgraph's input and output
    (the converter writes none), every buffer inside the flatbuffer (ai-edge-quantizer
    appends them after it, by offset, which a later rewrite of the flatbuffer would cut off)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))  # buffers stored by offset read in
    sub = model.subgraphs[0]
    model.signatureDefs = [fb.SignatureDefT(inputs=[fb.TensorMapT("input", int(sub.inputs[0]))],
                                            outputs=[fb.TensorMapT("output", int(sub.outputs[0]))],
                                            signatureKey=SIGNATURE, subgraphIndex=0)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _converted(conv, name: str) -> bytes:
    step("TFLite converter")
    try:
        return conv.convert()
    except Exception as e:  # the converter raises ConverterError/RuntimeError/ValueError with MLIR dumps
        raise ConversionError(f"TFLite conversion failed for {name}: {first_line(e)}") from e


def float_model(graph, integer_friendly: bool = False) -> bytes:
    """The float32 TFLite model of the graph (batch 1, signature added), converted once per graph: the
    input of ai-edge-quantizer's modes. integer_friendly: with `tflite/rewrite.py`'s exact rewrites (for
    `aeq-full`), checked on one input."""
    key = ("tflite-float", integer_friendly)
    if key in graph.cache:
        return graph.cache[key]
    if integer_friendly:
        plain = float_model(graph)
        rewritten, made = tflite_rewrite.integer_friendly(plain)
        err = tflite_rewrite.verify(plain, rewritten)
        if not err <= 1e-6:
            raise ConversionError(f"TFLite rewrite for integer ops changed the float model's output (max |diff| "
                                  f"{err:.3g}); this is a bug in xcit-edge")
        log.debug("TFLite float model rewrites: %s", made)
        graph.cache[key] = rewritten
    else:
        import tensorflow as tf

        conv = _new_converter(graph)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        graph.cache[key] = with_signature(_converted(conv, "the float model"))
    return graph.cache[key]


def _int_config(bits: int, symmetric: bool, granularity: str) -> dict:
    return {"num_bits": bits, "symmetric": symmetric, "granularity": granularity, "dtype": "INT"}


def aeq_recipe(spec, small: list[str] = ()) -> list[dict]:
    """The ai-edge-quantizer recipe for the spec. `aeq-full`: every op with `activation_bits` (8 or 16)
    activations and int8 weights, then int16 activations for the `int16_layers` regexes. Otherwise one
    rule per op type in `ops`, then a `no_quantize` rule per layer that stays float (later rules win in
    ai-edge-quantizer): `small`, the layers whose weight has fewer than the spec's `min_weight_elements`
    (`small_layers`), and `keep_nodes`."""
    config = _weight_config()
    if spec.mode == "aeq-full":
        bits = int(spec.quantization.get("activation_bits", 8))  # int16: symmetric, as LiteRT's 16x8 kernels want
        return [_rule(".*", "*", {**config, "activation_tensor_config": _int_config(bits, bits == 16, "TENSORWISE")}),
                *(_rule(regex, "*", _int16_config()) for regex in spec.quantization.get("int16_layers", []))]
    if spec.mode == "aeq-static":
        config["activation_tensor_config"] = _int_config(8, False, "TENSORWISE")
    rules = [_rule(".*", op, config) for op in spec.quantization.get("ops", AEQ_OPS)]
    # an op's scope in ai-edge-quantizer is its output tensor names, each followed by ";"
    rules += [{"regex": f"^{re.escape(name)};", "operation": "*", "algorithm_key": "no_quantize"}
              for name in [*small, *spec.quantization.get("keep_nodes", [])]]
    return rules


def _int16_config() -> dict:
    """int16 activations (symmetric, as LiteRT's 16x8 kernels want), int8 weights per channel."""
    return {**_weight_config(), "activation_tensor_config": _int_config(16, True, "TENSORWISE")}


def _weight_config() -> dict:
    return {"weight_tensor_config": _int_config(8, True, "CHANNELWISE"), "compute_precision": "INTEGER",
            "explicit_dequantize": False, "skip_checks": False, "min_weight_elements": 0}


def _rule(regex: str, operation: str, config: dict) -> dict:
    return {"regex": regex, "operation": operation, "algorithm_key": "min_max_uniform_quantize", "op_config": config}


def _weighted_layers(graph, spec) -> list[tuple[str, int]]:
    """(output tensor name, weight elements) of each op of the spec's `ops` in the float model, in
    execution order; none for a mode that quantizes every op (`aeq-full`) or is not ai-edge-quantizer's."""
    if spec.mode not in AEQ_MODES or spec.mode == "aeq-full":
        return []
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=float_model(graph),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    wanted = set(spec.quantization.get("ops", AEQ_OPS))
    return [(tensors[int(op["outputs"][0])]["name"],
             int(np.prod(tensors[int(op["inputs"][1])]["shape"])) if len(op["inputs"]) > 1 else 0)
            for op in interp._get_ops_details()
            if op["op_name"] in wanted and len(op["outputs"]) and int(op["outputs"][0]) in tensors]


def small_layers(graph, spec) -> list[str]:
    """Layers of the spec's op types that stay float because their weight has fewer than
    `min_weight_elements` elements (ai-edge-quantizer 0.10's own `min_weight_elements` option fails in
    static mode: AttributeError on a missing activation scale, measured; a `no_quantize` rule does not)."""
    least = int(spec.quantization.get("min_weight_elements", 0))
    return [name for name, n in _weighted_layers(graph, spec) if n < least]


def quantized_layers(graph, spec) -> list[str]:
    """The layers an ai-edge-quantizer spec quantizes (output tensor names, in execution order): what
    `convert --max-drop` can give back to float (`keep_nodes`). None for `aeq-full`: every op of an
    NPU model stays integer."""
    least = int(spec.quantization.get("min_weight_elements", 0))
    return [name for name, n in _weighted_layers(graph, spec) if n >= least]


@contextlib.contextmanager
def _progress_to_debug_log():
    """ai-edge-quantizer draws tqdm bars on stderr (not switchable for calibration): captured, logged at debug."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        yield
    if text := buf.getvalue().replace("\r", "\n").strip():
        log.debug("ai-edge-quantizer: %s", text.splitlines()[-1])


EQUALIZE_IMAGES = 64  # calibration images whose per-channel ranges set the LayerNorm equalization


def _equalized(model: bytes, calib: np.ndarray | None, name: str) -> tuple[bytes, int]:
    """The float model with its LayerNorms equalized (`tflite/equalize.py`) on the first calibration images,
    checked against the model it came from: the fold is exact up to float rounding."""
    if calib is None or not len(calib):
        raise UsageError(f"{name} needs calibration data (--calibration)")
    folded, count = tflite_equalize.equalize_layernorms(model, calib[:EQUALIZE_IMAGES])
    err, scale = max(tflite_rewrite.compare(model, folded, seed) for seed in range(2))
    if not err <= 1e-4 * max(scale, 1e-6):
        raise ConversionError(f"{name}: LayerNorm equalization changed the float model's output (max |diff| "
                              f"{err:.3g} at output scale {scale:.3g}); this is a bug in xcit-edge")
    log.info("%s: %d LayerNorms equalized on %d calibration images", name, count, min(len(calib), EQUALIZE_IMAGES))
    return folded, count


# A tensor whose calibrated values are (nearly) constant gets at least this range. With seeded random init the
# class token is zero, so class attention's q projection outputs ~1e-9 and its int8 scale came out 3.9e-12:
# XNNPACK then refused the whole model (an int8 FULLY_CONNECTED needs input x weight / output scale < 256;
# nano, measured). At this range an int8 step is 1.5e-5: nothing a near-constant tensor can lose.
MIN_CALIBRATED_RANGE = 2.0**-8


def _with_range_floor(qsvs: dict) -> dict:
    """Calibration ranges (ai-edge-quantizer's {tensor: {"min", "max"}}) widened about their centre to at
    least MIN_CALIBRATED_RANGE."""
    for name, qsv in qsvs.items():
        if "min" not in qsv or "max" not in qsv:
            continue
        lo, hi = np.asarray(qsv["min"], np.float32), np.asarray(qsv["max"], np.float32)
        narrow = (hi - lo) < MIN_CALIBRATED_RANGE
        if narrow.any():
            mid = (lo + hi) / 2
            qsv["min"] = np.where(narrow, mid - MIN_CALIBRATED_RANGE / 2, lo)
            qsv["max"] = np.where(narrow, mid + MIN_CALIBRATED_RANGE / 2, hi)
            log.debug("calibrated range of %s widened to %g", name, MIN_CALIBRATED_RANGE)
    return qsvs


def _aeq_quantize(graph, spec, calib: np.ndarray | None, recipe: list[dict]) -> tuple[bytes, dict]:
    """The quantized model and what was done to the float model first: LayerNorms equalized (spec option
    `equalize_layernorms`), tensors given int16 activations and whole-set ranges by what they compute
    (`int16_layernorms`, `int16_class_attention`: `tflite/int16.py`)."""
    from ai_edge_quantizer import quantizer

    model, details = float_model(graph, integer_friendly=spec.mode == "aeq-full"), {}
    if spec.quantization.get("equalize_layernorms", False):
        model, details["layernorms_equalized"] = _equalized(model, calib, spec.name)
    int16, whole_range = tflite_int16.int16_tensors(model, bool(spec.quantization.get("int16_layernorms")),
                                                    bool(spec.quantization.get("int16_class_attention")))
    if int16:
        recipe = [*recipe, *_exact_rules(int16, _int16_config())]
        details["int16_tensors"] = len(int16)
    if whole_range:
        details["whole_range_tensors"] = len(whole_range)
    step("ai-edge-quantizer")
    q = quantizer.Quantizer(model)
    q.load_quantization_recipe(recipe)
    try:
        with _progress_to_debug_log():
            result = None
            if q.need_calibration:
                if calib is None or not len(calib):
                    raise UsageError(f"{spec.name} needs calibration data (--calibration)")
                result = _with_range_floor(_calibrate(model, recipe, calib, set(whole_range)))
            quantized = q.quantize(result, enable_progress_bar=False, enable_progress_report=False).quantized_model
    except (XcitEdgeError, MemoryError):
        raise
    except Exception as e:  # ai-edge-quantizer raises ValueError/RuntimeError on models it cannot take
        raise ConversionError(f"{spec.name}: ai-edge-quantizer failed ({type(e).__name__}: {first_line(e)})") from e
    return with_signature(bytes(quantized)), details


def _exact_rules(names: list[str], config: dict) -> list[dict]:
    """One rule for exactly these tensor names (an op's scope in ai-edge-quantizer is its output names, each
    followed by ";"). One alternation, not a rule per name: the library searches every rule's regex for
    every op, and past Python's regex cache (512) each search recompiled (nano: 6 ops/s)."""
    return [_rule("^(?:" + "|".join(re.escape(n) for n in names) + ");", "*", config)]


def _calibrate(model: bytes, recipe: list[dict], calib: np.ndarray, whole_range: set[str]) -> dict:
    """ai-edge-quantizer's calibration ({tensor: {"min", "max"}}): its moving average of per-image extremes
    for every tensor, except those in `whole_range`, which get the extremes over the whole set."""
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    def update(qsv: dict, new: dict) -> dict:
        if not qsv:
            return {**new, "whole_min": new["min"], "whole_max": new["max"]}
        out = qsv_utils.moving_average_update(qsv, new)  # what the library does without a custom update
        out["whole_min"] = np.minimum(qsv.get("whole_min", qsv["min"]), new["min"])
        out["whole_max"] = np.maximum(qsv.get("whole_max", qsv["max"]), new["max"])
        return out

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    cal = calibrator.Calibrator(model, num_threads=os.cpu_count() or 1, qsv_update_func=update)
    cal.calibrate({SIGNATURE: [{"input": item[None]} for item in calib]}, manager)  # the model's input dtype
    qsvs = cal.get_model_qsvs()
    for name, qsv in qsvs.items():
        lo, hi = qsv.pop("whole_min", None), qsv.pop("whole_max", None)
        if name in whole_range and lo is not None:
            qsv["min"], qsv["max"] = lo, hi
    return qsvs


def _converter_quantize(graph, spec, calib: np.ndarray | None) -> bytes:
    conv = _converter(graph, spec, calib)
    keep = list(spec.quantization.get("keep_float", []))
    keep_nodes = list(spec.quantization.get("keep_nodes", []))  # convert --max-drop's choice of layers
    if spec.mode == "int16x8" and (keep or keep_nodes):
        # QuantizationDebugger.get_nondebug_quantized_model calls mlir_quantize without an inference
        # type: it would silently give int8 activations (TF 2.21, debugger.py `_get_quantized_model`).
        raise ConversionError(f"{spec.name}: TFLite's selective quantization is int8-only; int16x8 cannot "
                              "keep ops or layers in float (drop keep_float / --max-drop)")
    if not ((keep or keep_nodes) and spec.quantized):
        return with_signature(_converted(conv, spec.name))
    try:
        return with_signature(_quantize_selectively(conv, calib, keep, keep_nodes))
    except Exception as e:
        raise ConversionError(f"TFLite conversion failed for {spec.name}: {first_line(e)}") from e


def convert(graph, spec, calib: np.ndarray | None, workdir: Path) -> Conversion:
    aeq = spec.mode in AEQ_MODES
    recipe = aeq_recipe(spec, small_layers(graph, spec)) if aeq else None
    data, prepared = _aeq_quantize(graph, spec, calib, recipe) if aeq else (_converter_quantize(graph, spec, calib), {})
    out = workdir / spec.file
    out.write_bytes(data)
    ops = op_types(out)
    flex = [o for o in ops if o.startswith("Flex") or o == "CUSTOM"]
    if flex:
        raise ConversionError(f"{spec.name}: converted model needs non-builtin ops {flex}; stock LiteRT cannot run it")
    kept = float_ops(out) if spec.quantized else []
    if spec.mode == "aeq-full" and kept:
        raise ConversionError(f"{spec.name}: ops left in float after full-integer quantization: {', '.join(kept)}")
    details = {"ops": ops, "xca_blocks": xca_blocks(out)}  # how XNNPACK takes it: the manifest's runtime_defaults
    if aeq:
        details["quantizer"] = {"library": "ai-edge-quantizer", "recipe": recipe}
    details.update(prepared)  # layernorms_equalized (on the first EQUALIZE_IMAGES images), int16 tensors
    return Conversion([spec.file], kept, details)


def xca_blocks(model_path: Path) -> int:
    """Fused XCA blocks in the model, from the names the converter kept on op outputs."""
    interp = _interpreter(model_path, delegates=False)
    return count_blocks(t["name"] for t in interp.get_tensor_details())


def runs_with_xnnpack(path: Path) -> bool:
    """Whether LiteRT with its default delegate prepares the model. Probed in a child process:
    some XNNPACK failures are aborts (a double free, measured), not exceptions."""
    code = ("import sys; from ai_edge_litert.interpreter import Interpreter; "
            "Interpreter(model_path=sys.argv[1]).allocate_tensors()")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=300, check=False)
    return proc.returncode == 0


def _interpreter(path: Path, threads: int | None = None, delegates: bool = True):
    """A LiteRT interpreter; without the default (XNNPACK) delegate, ops are listed as they are."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return interp


def load(path: Path, spec=None, threads: int | None = None):
    """The interpreter LiteRT users get (default XNNPACK delegate), or builtin kernels where XNNPACK fails.
    threads: LiteRT's num_threads (None: its default)."""
    return _interpreter(path, threads, delegates=runs_with_xnnpack(path))


def run(interp, x: np.ndarray) -> np.ndarray:
    """One image per invoke: converted artifacts have batch 1 (what phones run)."""
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    outs = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        if inp["dtype"] != np.float32 and xi.dtype != inp["dtype"]:
            scale, zero = inp["quantization"]
            xi = np.clip(np.round(xi / scale + zero), *_range(inp["dtype"])).astype(inp["dtype"])
        if list(inp["shape"]) != list(xi.shape):
            interp.resize_tensor_input(inp["index"], xi.shape)
            interp.allocate_tensors()
        interp.set_tensor(inp["index"], xi.astype(inp["dtype"]))
        interp.invoke()
        outs.append(_dequantized(interp.get_tensor(out["index"]), out))
    return np.concatenate(outs)


def _range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return info.min, info.max


def block_outputs(path: Path, spec, x: np.ndarray) -> dict[int, np.ndarray]:
    """The output of every fused XCA block for inputs `x` (`validate`'s localization): the tensor
    leaving each block (names `xcit_edge/xca_i/...`), read with every intermediate tensor kept
    (builtin kernels: XNNPACK would hide them) and dequantized when int8/int16."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    details = {t["index"]: t for t in interp.get_tensor_details()}
    ops = [(";".join(details[o]["name"] for o in op["outputs"] if o in details), op["op_name"],
            [str(i) for i in op["inputs"]], [str(o) for o in op["outputs"]]) for op in interp._get_ops_details()]
    chosen = {b: int(t) for b, t in block_exits(ops, frozenset({"QUANTIZE", "DEQUANTIZE"})).items()}
    outs: dict[int, list] = {b: [] for b in chosen}
    for k in range(len(x)):
        run(interp, x[k:k + 1])
        for b, t in chosen.items():
            outs[b].append(_dequantized(interp.get_tensor(t), details[t]))
    return {b: np.concatenate(v) for b, v in sorted(outs.items())}


def _dequantized(y: np.ndarray, detail: dict) -> np.ndarray:
    if y.dtype in (np.float32, np.float16):
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def run_defaults(path: Path) -> dict:
    """One run of `path` in LiteRT's `Interpreter(model_path=...)` with its default options (the XNNPACK
    delegate applied, what an app gets); reports how XNNPACK took the model: its delegate kernels (one per
    partition) and the nodes left to the builtin kernels."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))  # default options: the XNNPACK delegate applied
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    interp.set_tensor(d["index"], zeros_input(d["shape"], d["dtype"]))
    interp.invoke()
    raw = interp._interpreter
    nodes = [(raw.NodeName(i), set(raw.NodeInputs(i)), set(raw.NodeOutputs(i))) for i in range(raw.NumNodes())]
    model_nodes = [n for n in nodes if n[0] != "DELEGATE"]  # delegate kernels are appended after the model's
    kernels = [n for n in nodes if n[0] == "DELEGATE"]
    builtin = _builtin_nodes(model_nodes, kernels, set(raw.OutputIndices()))
    return {"xnnpack_partitions": len(kernels), "nodes": len(model_nodes), "builtin_nodes": len(builtin),
            "builtin_ops": sorted({model_nodes[i][0] for i in builtin})}


def _builtin_nodes(model_nodes: list, kernels: list, outputs: set) -> set[int]:
    """Model nodes no delegate replaced (they run on LiteRT's builtin kernels), by data flow: a delegate
    kernel computes its partition's boundary tensors and hides the rest, so a node outside every partition
    produces a tensor a kernel reads, a model output no kernel produces, or an input of another such node."""
    made_by_kernels = set().union(*(k[2] for k in kernels)) if kernels else set()
    read_by_kernels = set().union(*(k[1] for k in kernels)) if kernels else set()
    outside = {i for i, (_, _, outs) in enumerate(model_nodes)
               if not outs & made_by_kernels and outs & (read_by_kernels | outputs)}
    while True:
        needed = set().union(*(model_nodes[i][1] for i in outside)) if outside else set()
        more = {i for i, (_, _, outs) in enumerate(model_nodes)
                if i not in outside and not outs & made_by_kernels and outs & needed}
        if not more:
            return outside
        outside |= more


def describe(path: Path, graph) -> dict | None:
    """TFLite Metadata for image classifiers (MediaPipe Tasks, the Task Library): `metadata.py`."""
    from xcit_edge.backends.tflite.metadata import add_image_classifier_metadata

    return add_image_classifier_metadata(path, graph)


NAME = "tflite"
RUNTIME_MODULE = "ai_edge_litert"
DISTRIBUTIONS = ("ai-edge-litert", "ai-edge-quantizer", "mediapipe")
MODES = (FLOAT, QuantMode("fp16-weights"), QuantMode("full-integer", integer=True, calibrated=True),
         QuantMode("int16x8", integer=True, calibrated=True), QuantMode("aeq-static", integer=True, calibrated=True),
         QuantMode("aeq-dynamic", integer=True), QuantMode("aeq-full", integer=True, calibrated=True))
# peak growth of `convert` per SavedModel byte, fitted (rounded up) to small_12, medium_24 and large_24
# (README "Memory estimate"): the MLIR converter's module, its serialized flatbuffer and the interpreter check
CONVERT_MEMORY_FACTOR = 12.0
RUN_OPTIONS = ()
convert_within_drop = None
register(sys.modules[__name__])
