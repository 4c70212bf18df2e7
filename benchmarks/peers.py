"""xcit-edge artifacts against what users would pick instead, same seeded weights, one run, one machine.

For each model: seeded timm weights -> `xcit-edge build` (our Keras XCiT, SavedModel) -> `xcit-edge convert`
(timed: the four shipping targets in one command, then the two other int8 targets). Then, side by side,
taking turns (`xcit_edge.bench`: warm-up, median/p90, throughput, same threads, same seeded input):

- every xcit-edge artifact in its runtime, and the optimizations they carry switched off one at a time
  (`--no-variants` skips these): ONNX without `onnx_optimize`, ONNX without its scale folding, ONNX after
  ONNX Runtime's offline optimization (on, as it is not shipped), OpenVINO with the THROUGHPUT hint,
  OpenVINO read from the TensorFlow graph instead of the optimized ONNX, TFLite int8 with only the L2
  normalization in float (the policy before), TFLite fp16 and int8 on LiteRT's builtin kernels (no XNNPACK);
- the TF SavedModel (its serving function, eager TF), timm PyTorch eager, timm -> `torch.onnx.export`
  in ONNX Runtime, and timmx's ONNX and OpenVINO exports where `timmx` is installed
  (`pip install -e '.[test,peers]'`).

Ratios are to timm -> torch.onnx in ONNX Runtime (the first row). Then the issue's goals, each as a ratio
from this run, and a roofline line: the model's FLOPs (torch's FLOP counter on the timm model) over the
machine's peak, measured in the same run with a large fp32 matmul at the same thread count.

    python benchmarks/peers.py [--models xcit_nano_12_p16_224] [--batches 1,8] [--threads 2]
                               [--iterations 30] [--no-variants] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.timm_ref, the tests' reference

with contextlib.suppress(ImportError):  # torch before TensorFlow (import-order crash otherwise)
    import timm  # noqa: F401
    import torch

from xcit_edge.bench import (
    BenchOptions,
    Candidate,
    artifact_candidate,
    bench_candidates,
    machine_info,
    machine_line,
    table_rows,
)
from xcit_edge.report import text_table

SHIPPING = ("tflite-int8", "tflite-fp16", "onnx", "openvino")
OTHER_INT8 = ("onnx-int8", "openvino-int8")
BASELINE = "timm -> torch.onnx (ORT)"
CLI = [sys.executable, "-m", "xcit_edge.cli"]


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _float_input(size: int, nchw: bool):
    def make(batch: int, rng: np.random.Generator) -> np.ndarray:
        x = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
        return _nchw(x) if nchw else x

    return make


def _cli(args: list[str]) -> float:
    """Run an xcit-edge command; its wall time in seconds (process start included, as a user sees it)."""
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, "-q", *args], capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):
        sys.exit(f"xcit-edge {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


# -- the model and its artifacts -----------------------------------------------------------------------------


def prepare(name: str, work: Path, seed: int) -> dict:
    """Seeded weights, our SavedModel, the xcit-edge artifacts; conversion times."""
    from safetensors.torch import save_file
    from support.timm_ref import seeded_timm_model

    model = seeded_timm_model(name, seed=seed)
    ckpt = work / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    _cli(["build", name, "--weights", str(ckpt), "--out", str(work / "savedmodel")])
    out = work / "artifacts"
    times = {}
    for group in (SHIPPING, OTHER_INT8):
        times[",".join(group)] = _cli(["convert", str(work / "savedmodel"), "--target", ",".join(group),
                                       "--out", str(out), "--calibration", "sample", "--force"])
    return {"model": model, "checkpoint": ckpt, "savedmodel": work / "savedmodel", "artifacts": out,
            "convert_s": times}


# -- peers ---------------------------------------------------------------------------------------------------


def _ort_candidate(name: str, path: Path, size: int, nchw: bool) -> Candidate:
    from xcit_edge.backends import onnx as onnx_backend

    def load(threads: int):
        session = onnx_backend.load(path, None, threads)
        return lambda x: onnx_backend.run(session, x)

    return Candidate(name, "onnx", load, _float_input(size, nchw), path.stat().st_size)


def timm_eager(model, size: int) -> Candidate:
    def load(threads: int):
        torch.set_num_threads(threads)

        def run(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        return run

    return Candidate("timm PyTorch eager", "torch", load, _float_input(size, True))


def timm_onnx(model, size: int, work: Path) -> Candidate:
    path = work / "timm.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, size, size), str(path), opset_version=17, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "b"}, "output": {0: "b"}}, dynamo=False)
    return _ort_candidate(BASELINE, path, size, True)


def tf_savedmodel(sm: Path, size: int) -> Candidate:
    import tensorflow as tf

    fn = tf.saved_model.load(str(sm)).signatures["serving_default"]
    key = next(iter(fn.structured_outputs))
    arg = next(iter(fn.structured_input_signature[1]))
    size_bytes = sum(f.stat().st_size for f in sm.rglob("*") if f.is_file())

    def load(threads: int):  # TF's thread pools are fixed at its start (main() sets them)
        return lambda x: fn(**{arg: tf.constant(x)})[key].numpy()

    return Candidate("TF SavedModel (eager)", "tensorflow", load, _float_input(size, False), size_bytes)


def timmx_exports(name: str, ckpt: Path, size: int, work: Path) -> list[Candidate]:
    """timmx's ONNX (dynamo export + onnxslim) and OpenVINO (fp16-compressed weights) exports, run at f32."""
    try:
        import timmx  # noqa: F401
    except ImportError:
        print("  timmx not installed: its rows are skipped (pip install -e '.[test,peers]')")
        return []
    out = []
    onnx_path, xml = work / "timmx.onnx", work / "timmx.xml"
    for fmt, path in (("onnx", onnx_path), ("openvino", xml)):
        # timmx's dynamo ONNX export wants a batch of 2 traced for a dynamic batch
        cmd = [sys.executable, "-m", "timmx", "export", fmt, name, "--checkpoint", str(ckpt), "--output", str(path),
               "--dynamic-batch", "--batch-size", "2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"  timmx export {fmt} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        if fmt == "onnx":
            out.append(_ort_candidate("timmx ONNX (ORT)", path, size, True))
        else:
            out.append(_openvino_candidate("timmx OpenVINO (f32)", path, size, True, "LATENCY"))
    return out


def _openvino_candidate(name: str, xml: Path, size: int, nchw: bool, hint: str) -> Candidate:
    """An IR compiled as the `openvino` target's artifacts are (f32 inference), with PERFORMANCE_HINT `hint`."""
    from xcit_edge.backends import openvino as ov_backend
    from xcit_edge.targets import all_targets

    spec = all_targets()["openvino"]
    spec = replace(spec, options={**spec.options, "performance_hint": hint})

    def load(threads: int):
        compiled = ov_backend.load(xml, spec, threads)
        return lambda x: ov_backend.run(compiled, x)

    size_bytes = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    return Candidate(name, "openvino", load, _float_input(size, nchw), size_bytes)


# -- the optimizations, switched off one at a time -----------------------------------------------------------


def variants(prep: dict, size: int, work: Path) -> list[Candidate]:
    """The shipped artifacts with one optimization off (or, for ORT's offline optimization, on)."""
    from xcit_edge.backends import tflite as tfl
    from xcit_edge.graph import prepare as prepare_graph

    arts, graph = prep["artifacts"], prepare_graph(prep["savedmodel"])
    out = [_ort_candidate(name, _convert(graph, "onnx", options, work / slug), size, False)
           for name, slug, options in (("onnx, onnx_optimize off", "onnx-plain", {"optimize": False}),
                                       ("onnx, fold_scales off", "onnx-no-scales",
                                        {"optimize_skip": ["scales_folded"]}))]
    out.append(_ort_candidate("onnx + ORT offline-optimized", _ort_offline(arts / "onnx" / "model.onnx", work),
                              size, False))
    out.append(_openvino_candidate("openvino, THROUGHPUT hint", arts / "openvino" / "model.xml", size, False,
                                   "THROUGHPUT"))
    out.append(_openvino_candidate("openvino, read from TF (not ONNX)", _openvino_from_tf(graph, work), size, False,
                                   "LATENCY"))
    calib = np.random.default_rng(0).standard_normal((32, size, size, 3), dtype=np.float32)  # timing only
    l2norm_only = _convert(graph, "tflite-int8", {}, work / "tflite-int8-l2norm", calib,
                           keep_float=["SUM", "SQRT", "MAXIMUM", "DIV"])
    paths = {"tflite-int8 by TFLite's converter, only l2norm float (before)": (l2norm_only, True)}
    paths.update({f"{t}, builtin kernels (no XNNPACK)": (arts / t / "model.tflite", False)
                  for t in ("tflite-fp16", "tflite-int8")})
    for name, (path, xnnpack) in paths.items():
        def load(threads: int, path=path, xnnpack=xnnpack):
            interp = tfl._interpreter(path, threads, delegates=xnnpack)
            return lambda x: tfl.run(interp, x)

        out.append(Candidate(name, "tflite", load, _float_input(size, False), path.stat().st_size))
    return out


def _convert(graph, target: str, options: dict, where: Path, calib=None, keep_float=None) -> Path:
    """A target converted with changed options (the variant's one difference)."""
    from xcit_edge.backends import backend
    from xcit_edge.targets import all_targets

    spec = all_targets()[target]
    # keep_float: TFLite's own converter (`full-integer`) with that policy, the int8 path before ai-edge-quantizer
    quant = spec.quantization if keep_float is None else {**spec.quantization, "keep_float": keep_float,
                                                          "mode": "full-integer"}
    spec = replace(spec, options={**spec.options, **options}, quantization=quant)
    where.mkdir(exist_ok=True)
    backend(spec.backend).convert(graph, spec, calib, where)
    return where / spec.file


def _openvino_from_tf(graph, work: Path) -> Path:
    """The IR OpenVINO's TensorFlow frontend makes of the same prepared graph (the backend's path before)."""
    import openvino as ov

    xml = work / "openvino-from-tf" / "model.xml"
    xml.parent.mkdir(exist_ok=True)
    ov.save_model(ov.convert_model(graph.graph_def), str(xml), compress_to_fp16=False)
    return xml


def _ort_offline(path: Path, work: Path) -> Path:
    """ONNX Runtime's own graph optimizations saved to a file (EXTENDED: ALL would bake this CPU's layouts)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(work / "onnx-ort-offline.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Path(so.optimized_model_filepath)


# -- roofline ------------------------------------------------------------------------------------------------


def model_gflops(model, size: int) -> float:
    """GFLOPs of one image (torch's FLOP counter: matmuls and convolutions, 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def peak_gflops(threads: int, work: Path, n: int = 2048, reps: int = 5) -> dict[str, float]:
    """The machine's fp32 matmul rate at this thread count, n x n x n, best of reps, in three libraries
    (their best is the roofline's compute roof: torch's MKL takes an AVX2 path on AMD CPUs, measured
    well below XNNPACK and MLAS there)."""
    import onnx
    import tensorflow as tf
    from onnx import TensorProto, helper, numpy_helper

    from xcit_edge.backends import onnx as onnx_backend
    from xcit_edge.backends import tflite as tfl

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
                              [numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(work / "mm.onnx"))
    session = onnx_backend.load(work / "mm.onnx", None, threads)
    dense = tf.function(lambda x: tf.matmul(x, tf.constant(b)), input_signature=[tf.TensorSpec([n, n], tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([dense.get_concrete_function()], None)
    (work / "mm.tflite").write_bytes(conv.convert())
    interp = tfl._interpreter(work / "mm.tflite", threads)
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    calls = {"torch": lambda: ta @ tb, "onnxruntime (MLAS)": lambda: session.run(None, {"a": a}),
             "LiteRT (XNNPACK)": lambda: tfl.run(interp, a[None])}
    rates = {}
    for name, fn in calls.items():
        fn()
        rates[name] = 2 * n**3 / min(_timed(fn) for _ in range(reps)) / 1e9
    return rates


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- the run -------------------------------------------------------------------------------------------------


def goals(timings: list, convert_s: dict, batch: int) -> list[str]:
    """The issue's goals as ratios from this run (batch 1 in the issue; printed for each batch)."""
    med = {t.name: t.median_ms for t in timings if t.batch == batch}
    fp32_peers = [n for n in (BASELINE, "timm PyTorch eager", "TF SavedModel (eager)", "timmx ONNX (ORT)",
                              "timmx OpenVINO (f32)") if n in med]
    best = min(fp32_peers, key=med.get)
    lines = [_goal("xcit-edge ONNX / timm -> torch.onnx (ORT)", med["onnx"] / med[BASELINE], 0.80)]
    if "timmx OpenVINO (f32)" in med:
        lines.append(_goal("xcit-edge OpenVINO f32 / timmx OpenVINO f32", med["openvino"] / med["timmx OpenVINO (f32)"],
                           0.90))
    lines.append(_goal(f"xcit-edge TFLite int8 / best fp32 peer ({best})", med["tflite-int8"] / med[best], 0.50))
    lines.append(_goal(f"(TFLite fp16 / best fp32 peer ({best}))", med["tflite-fp16"] / med[best], 0.50))
    four = convert_s[",".join(SHIPPING)]
    lines.append(f"conversion to {', '.join(SHIPPING)}: {four:.1f} s "
                 f"(goal < 120 s: {'met' if four < 120 else 'NOT met'})")
    return lines


def _goal(what: str, ratio: float, limit: float) -> str:
    return f"{what}: {ratio:.2f} (goal <= {limit:.2f}: {'met' if ratio <= limit else 'NOT met'})"


def run_model(name: str, args, work: Path) -> dict:
    size = int(name.rsplit("_", 1)[1])
    print(f"\n## {name}  (work dir {work})", flush=True)
    prep = prepare(name, work, args.seed)
    for group, s in prep["convert_s"].items():
        print(f"  convert --target {group}: {s:.1f} s")
    model = prep["model"]
    candidates = [timm_onnx(model, size, work), timm_eager(model, size), tf_savedmodel(prep["savedmodel"], size)]
    candidates += timmx_exports(name, prep["checkpoint"], size, work)
    candidates += [artifact_candidate(prep["artifacts"] / t) for t in (*SHIPPING, *OTHER_INT8)]
    if args.variants:
        candidates += variants(prep, size, work)
    opts = BenchOptions(batches=tuple(args.batches), threads=(args.threads,), iterations=args.iterations,
                        memory=True)
    timings = bench_candidates(candidates, opts)
    for line in text_table(*table_rows(timings)):
        print("  " + line)
    gflops, rates = model_gflops(model, size), peak_gflops(args.threads, work)
    peak = max(rates.values())
    print(f"  roofline: {gflops:.3f} GFLOP per image; fp32 matmul {n_of(rates)} ({args.threads} threads) "
          f"-> compute floor {gflops / peak * 1e3:.2f} ms per image")
    for batch in args.batches:
        floats = [t for t in timings if t.batch == batch and "int8" not in t.name]
        best = min(floats, key=lambda t: t.median_ms)
        floor = gflops * batch / peak * 1e3
        print(f"  batch {batch}: fastest float {best.name} {best.median_ms:.2f} ms = {floor / best.median_ms:.0%} "
              f"of the fp32 roof")
        for line in goals(timings, prep["convert_s"], batch):
            print(f"    {line}")
    return {"model": name, "convert_s": prep["convert_s"], "gflops": gflops, "matmul_gflops": rates,
            "results": [asdict(t) for t in timings]}


def n_of(rates: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(rates.items(), key=lambda kv: -kv[1])) + " GFLOP/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="xcit_nano_12_p16_224")
    ap.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-variants", dest="variants", action="store_false")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from xcit_edge.util.tfimport import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(json.dumps(machine_info()))
    results = [run_model(name, args, Path(tempfile.mkdtemp(prefix=f"peers-{name}-")))
               for name in args.models.split(",")]
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "threads": args.threads, "models": results},
                                        indent=2))


if __name__ == "__main__":
    main()
