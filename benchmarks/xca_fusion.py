"""Fused vs as-written XCA: latency per target and batch, and the fused ONNX against timm's own export.

For each model (seeded timm weights imported into our Keras XCiT), the graph is prepared twice,
with XCA fusion and with `--no-fuse`, and converted to ONNX, OpenVINO (f32) and TFLite
(fp16 weights, float compute); every artifact then runs round-robin in its runtime with the same
thread count, so machine drift hits all alike. With torch installed, `torch.onnx.export` of the
same timm model runs in ONNX Runtime beside them. Printed: median latency (ms) per artifact and
batch, the fused/as-written ratio per target, the fused-ONNX/timm-ONNX ratio, and the fp32
agreement of each fused artifact with its as-written twin.

    python benchmarks/xca_fusion.py [--models xcit_nano_12_p16_224,xcit_nano_12_p8_224]
                                    [--batches 1,8] [--threads 2] [--reps 30]

TFLite artifacts have batch 1 (what phones run): batch 8 is 8 invocations.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.timm_ref, the tests' reference

with contextlib.suppress(ImportError):  # torch before TensorFlow (import-order crash otherwise)
    import timm  # noqa: F401
    import torch  # noqa: F401

from xcit_edge.util.tfimport import import_tensorflow_quietly

TARGETS = ("onnx", "openvino", "tflite-fp16")


def _ort(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    # no spin-waiting after a run: it would steal the cores from the runtime timed next
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _openvino(path: Path, threads: int):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    return lambda x: req.infer({0: x})[compiled.outputs[0]]


def _tflite(path: Path, threads: int):
    from xcit_edge.backends.tflite import _interpreter

    interp = _interpreter(path, threads=threads)
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def run(x):
        outs = []
        for i in range(len(x)):
            interp.set_tensor(inp, x[i:i + 1])
            interp.invoke()
            outs.append(interp.get_tensor(out))
        return np.concatenate(outs)

    return run


RUNNERS = {"onnx": _ort, "openvino": _openvino, "tflite": _tflite}


def _artifacts(sm: Path, tmp: Path, threads: int) -> dict:
    """{(target, kind): (runner, fused blocks)} for the fused and as-written graphs."""
    from xcit_edge.backends import backend
    from xcit_edge.graph import prepare
    from xcit_edge.targets import all_targets

    runners = {}
    for kind, fuse in (("fused", True), ("as-written", False)):
        graph = prepare(sm, fuse=fuse)
        for name in TARGETS:
            spec = all_targets()[name]
            d = tmp / kind / name
            d.mkdir(parents=True)
            conv = backend(spec.backend).convert(graph, spec, None, d)
            runners[(name, kind)] = (RUNNERS[spec.backend](d / spec.file, threads), conv.details["xca_blocks"])
    return runners


def _timm_onnx(model_name: str, seed: int, size: int, tmp: Path, threads: int):
    try:
        import torch
        from support.timm_ref import seeded_timm_model
    except ImportError:
        return None
    model = seeded_timm_model(model_name, seed=seed)
    path = tmp / "timm.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, size, size), str(path), opset_version=17, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "b"}, "output": {0: "b"}}, dynamo=False)
    return _ort(path, threads)


def _time(runners: dict, x: dict, reps: int, block: int = 5) -> dict:
    """Median seconds per runner. Runners take turns in blocks of `block` calls (the first call
    of a block is a discarded warm-up) so machine drift is shared while one runtime's idle
    threads do not slow the next one's single call."""
    samples: dict = {k: [] for k in runners}
    for _ in range(max(1, reps // block)):
        for k, fn in runners.items():
            fn(x[k])
            for _ in range(block):
                t0 = time.perf_counter()
                fn(x[k])
                samples[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def bench_model(model_name: str, batches: list[int], threads: int, reps: int) -> None:
    import torch  # noqa: F401 - timm reference
    from support.timm_ref import images, rel_max_err, seeded_timm_model

    from xcit_edge.model.build import build

    tmp = Path(tempfile.mkdtemp(prefix="bench-xca-"))
    print(f"{model_name}: artifacts in {tmp} (fused/, as-written/, timm.onnx)", flush=True)
    size = int(model_name.rsplit("_", 1)[1])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in seeded_timm_model(model_name, seed=5).state_dict().items()},
              tmp / "w.safetensors")
    build(model_name, tmp / "sm", weights=tmp / "w.safetensors")
    arts = _artifacts(tmp / "sm", tmp, threads)
    runners = {k: fn for k, (fn, _) in arts.items()}
    timm_run = _timm_onnx(model_name, 5, size, tmp, threads)
    if timm_run:
        runners[("timm torch.onnx.export", "ort")] = timm_run
    probe = images(2, size, seed=3)
    if timm_run:  # timm's export is NCHW; equal outputs show it is the same model
        print(f"  timm export vs fused ONNX relative max error "
              f"{rel_max_err(timm_run(_nchw(probe)), runners[('onnx', 'fused')](probe)):.2e}")
    print(f"\n{model_name}: fused XCA blocks per artifact "
          + ", ".join(f"{t} {arts[(t, 'fused')][1]}" for t in TARGETS))
    for t in TARGETS:
        err = rel_max_err(runners[(t, "fused")](probe), runners[(t, "as-written")](probe))
        print(f"  {t}: fused vs as-written fp32 relative max error {err:.2e}")
    for batch in batches:
        x = images(batch, size, seed=batch)
        med = _time(runners, {k: _nchw(x) if k[1] == "ort" else x for k in runners}, reps)
        print(f"  batch {batch}, {threads} threads, median of {reps} (ms):")
        for t in TARGETS:
            f, a = med[(t, "fused")], med[(t, "as-written")]
            print(f"    {t:12s} fused {f * 1e3:8.2f}  as-written {a * 1e3:8.2f}  fused/as-written {f / a:5.2f}")
        if timm_run:
            tm, f = med[("timm torch.onnx.export", "ort")], med[("onnx", "fused")]
            print(f"    {'timm export':12s} {tm * 1e3:8.2f} in onnxruntime; "
                  f"xcit-edge fused ONNX / timm export {f / tm:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="xcit_nano_12_p16_224,xcit_nano_12_p8_224")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    import_tensorflow_quietly()
    for name in args.models.split(","):
        bench_model(name, [int(b) for b in args.batches.split(",")], args.threads, args.reps)


if __name__ == "__main__":
    main()
