"""How much faster int8 matmuls are than fp32 ones in each runtime, on this CPU: the ceiling for every int8 target.

    python benchmarks/int8_kernels.py [--iterations 600]

An int8 artifact can only be as much faster than its float one as the runtime's int8 matmul kernels are
faster than its fp32 ones; everything else the model runs (LayerNorm, softmax, GELU, quantize/dequantize)
only adds. So this times a stack of matmuls and nothing else, at nano's shapes (197 tokens, widths 128,
384, 512: qkv, fc1, fc2 and proj alternating), in fp32 and int8, per runtime, with the quantizer settings
the int8 targets use:

- LiteRT (XNNPACK, default options): TFLite converter, static int8 (per-channel weights, per-tensor
  activations) and dynamic range (int8 weights, activations quantized per call by XNNPACK's qd8 kernels);
- ONNX Runtime (the session `xcit-edge bench` opens): `quantize_dynamic` with per-channel weights and `reduce_range`, as
  `onnx-int8`;
- OpenVINO CPU (compiled as `bench` compiles it): `nncf.quantize` (transformer model type), as `openvino-int8`.

Without int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, Arm dotprod) an x86 int8 multiply-add goes
through 16-bit products (`vpmaddubsw` / `vpmaddwd`), so the int8 speed-up over AVX2 FMA is small; with them it
is 2-4x. Each ratio is the int8 median over the fp32 median, the two taking turns of 5 calls
(`xcit_edge.bench.time_round_robin`, as `xcit-edge bench` does), so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xcit_edge.bench import BenchOptions, machine_line, time_round_robin

TOKENS = 197
WIDTHS = (128, 384, 128, 512, 128)  # qkv-like widen, back, fc1-like widen, back
REPEAT = 4  # 16 matmuls: the order of a quarter of nano's 12 blocks
THREADS = 2


def _weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = list(itertools.pairwise(WIDTHS)) * REPEAT
    return [rng.standard_normal((i, o), dtype=np.float32) / np.float32(np.sqrt(i)) for i, o in pairs]


def _input(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, TOKENS, WIDTHS[0]), dtype=np.float32)


def _calibration() -> list[np.ndarray]:
    return [_input(seed) for seed in range(100, 116)]


def medians_taking_turns(calls: list[Callable[[], object]], iterations: int) -> list[float]:
    """Median ms of each call, the calls taking turns (the project's round-robin timer)."""
    opts = BenchOptions(warmup=10, iterations=iterations, turn=5, memory=False)
    times = time_round_robin([(lambda _x, call=call: call(), None) for call in calls], opts)
    return [float(np.median(t)) for t in times]


def _tflite(weights: list[np.ndarray], mode: str) -> Callable[[], object]:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    @tf.function(input_signature=[tf.TensorSpec((1, TOKENS, WIDTHS[0]), tf.float32)])
    def stack(x):
        x = tf.reshape(x, (TOKENS, WIDTHS[0]))  # 2-D: a FULLY_CONNECTED per matmul, as in the artifacts
        for w in weights:
            x = tf.matmul(x, tf.constant(w))
        return tf.reshape(x, (1, TOKENS, -1))

    conv = tf.lite.TFLiteConverter.from_concrete_functions([stack.get_concrete_function()])
    if mode != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        conv.representative_dataset = lambda: ([x] for x in _calibration())
    interp = Interpreter(model_content=conv.convert(), num_threads=THREADS)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], _input())
    return interp.invoke


def _onnx_model(weights: list[np.ndarray], path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, name = [], [], "x"
    for k, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes.append(helper.make_node("MatMul", [name, f"w{k}"], [f"y{k}"]))
        name = f"y{k}"
    graph = helper.make_graph(
        nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, TOKENS, WIDTHS[0]])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _ort(weights: list[np.ndarray], mode: str, work: Path) -> Callable[[], object]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from xcit_edge.backends import onnx as onnx_backend

    path = work / "stack.onnx"
    if not path.exists():
        _onnx_model(weights, path)
    if mode == "int8":
        quantized = work / "stack-int8.onnx"
        quantize_dynamic(str(path), str(quantized), op_types_to_quantize=["MatMul"], per_channel=True,
                         reduce_range=True, weight_type=QuantType.QInt8)
        path = quantized
    session = onnx_backend.load(path, threads=THREADS)  # the session `bench` times: no spin-waiting between turns
    feed = {"x": _input()}
    return lambda: session.run(None, feed)


def _openvino(weights: list[np.ndarray], mode: str, work: Path) -> Callable[[], object]:
    import openvino as ov

    from xcit_edge.backends import openvino as openvino_backend

    path = work / "stack.onnx"
    if not path.exists():
        _onnx_model(weights, path)
    if mode == "int8":
        import nncf

        model = nncf.quantize(ov.Core().read_model(str(path)), nncf.Dataset(_calibration()),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=16)
        path = work / "stack-int8.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
    compiled = openvino_backend.load(path, threads=THREADS)
    if mode == "int8":  # that the int8 FullyConnected kernels run, not a float fallback
        kinds = {op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ops()
                 if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"}
        print(f"OpenVINO int8: FullyConnected nodes execute in {', '.join(sorted(kinds))}")
    request, x = compiled.create_infer_request(), _input()
    return lambda: request.infer([x])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=600)
    args = parser.parse_args()
    print(machine_line())
    weights = _weights()
    macs = sum(w.shape[0] * w.shape[1] for w in weights) * TOKENS
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tflite_fp32 = _tflite(weights, "fp32")
        pairs = {
            "LiteRT static int8": (tflite_fp32, _tflite(weights, "int8")),
            "LiteRT dynamic int8 (qd8)": (tflite_fp32, _tflite(weights, "dynamic")),
            "ONNX Runtime quantize_dynamic": (_ort(weights, "fp32", work), _ort(weights, "int8", work)),
            "OpenVINO NNCF int8": (_openvino(weights, "fp32", work), _openvino(weights, "int8", work)),
        }
        print(f"\n{len(weights)} matmuls, {TOKENS} tokens, widths {WIDTHS}, {macs / 1e6:.0f} M MACs, "
              f"{THREADS} threads, medians of {args.iterations} calls, fp32 and int8 taking turns")
        print(f"{'runtime / int8 scheme':32} {'fp32 ms':>8} {'GFLOP/s':>8} {'int8 ms':>8} {'int8 / fp32':>12}")
        for name, (fp32, int8) in pairs.items():
            f_ms, q_ms = medians_taking_turns([fp32, int8], args.iterations)
            print(f"{name:32} {f_ms:8.3f} {2 * macs / f_ms / 1e6:8.0f} {q_ms:8.3f} {q_ms / f_ms:12.2f}")


if __name__ == "__main__":
    main()
