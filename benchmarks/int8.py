"""int8 evidence for the README: accuracy on the trained and stress fixtures, latency against float per runtime.

    python benchmarks/int8.py [--images 500] [--iterations 60] [--skip-accuracy] [--skip-latency]

Accuracy: the trained fixture and its quantization stress variant (`xcit_edge/model/stress.py`) are
converted to every int8 target (calibrated on 200 seeded images, seed 10) and run on held-out images
(seed 11) against the float32 SavedModel: top-1 accuracy, drop (points), cosine mean/min, each
target's verdict under its own tolerances. Latency: XCiT nano p16 224 (seeded weights) converted to
every target, timed at batch 1 on 2 threads by `xcit-edge bench`'s round-robin; each int8 artifact's
ratio is against its own runtime's float artifact in the same run. The XNNPACK line reads each TFLite
manifest's `runtime_defaults` (partitions of LiteRT's default delegate, nodes left to builtin kernels).
Goals (issue 17): drop <= 0.5 (trained) / <= 1.0 (stress); TFLite and OpenVINO int8 <= 0.6x float;
ONNX Runtime int8 <= 0.8x where the CPU has VNNI, <= 1.1x elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.timm_ref, the tests' reference

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "xcit_fixture_4_p8_64.safetensors"
FLOAT_OF = {"tflite-int8": "tflite-fp16", "tflite-dynamic-int8": "tflite-fp16", "onnx-int8": "onnx",
            "openvino-int8": "openvino", "tflite-16x8-full": "tflite-fp16",
            "tflite-int8-full": "tflite-fp16"}
LATENCY_GOAL = {"tflite": 0.6, "openvino": 0.6}


def _convert(model: Path, targets: list[str], out: Path, calibration: Path | None) -> dict:
    from xcit_edge.convert import ConvertOptions, convert
    from xcit_edge.targets import parse_targets

    opts = ConvertOptions(calibration=str(calibration) if calibration else "sample", force=True)
    results = convert(str(model), parse_targets(",".join(targets)), out, opts)
    bad = [r.error for r in results if r.error]
    if bad:
        raise SystemExit("conversion failed: " + "; ".join(bad))
    return {r.target: r for r in results}


def accuracy(images: int, work: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from xcit_edge.data.synthetic import make_images
    from xcit_edge.model.build import build
    from xcit_edge.model.stress import stress_weights
    from xcit_edge.targets import all_targets
    from xcit_edge.validate import ValidateOptions, validate

    int8 = [n for n, s in all_targets().items() if s.quantized]
    cal, held = work / "calib.npz", work / "held.npz"
    np.savez(cal, **dict(zip(("images", "labels"), make_images(200, 64, seed=10), strict=True)))
    np.savez(held, **dict(zip(("images", "labels"), make_images(images, 64, seed=11), strict=True)))
    save_file(stress_weights(load_file(str(FIXTURE))), str(work / "stress.safetensors"))
    print(f"\naccuracy on {images} held-out images (seed 11), calibration 200 images (seed 10)")
    print(f"{'model':8s} {'target':20s} {'accuracy':>8s} {'drop':>6s} {'cos mean':>9s} {'cos min':>8s}  verdict")
    for name, weights in (("trained", FIXTURE), ("stress", work / "stress.safetensors")):
        build("xcit_fixture_4_p8_64", work / name, weights=weights, force=True)
        arts = _convert(work / name, int8, work / f"{name}-art", cal)
        report = validate([arts[t].path for t in int8], ValidateOptions(source=str(work / name),
                                                                         calibration=str(held)))
        for row in report.artifacts:
            m = row.metrics
            print(f"{name:8s} {row.target:20s} {m['accuracy']:8.4f} {m['top1_drop']:6.2f} {m['cosine_mean']:9.5f} "
                  f"{m['cosine_min']:8.5f}  {'pass' if row.passed else 'FAIL ' + '; '.join(row.failures)}", flush=True)


def latency(iterations: int, work: Path) -> None:
    from xcit_edge.bench import BenchOptions, bench
    from xcit_edge.model.build import build
    from xcit_edge.targets import all_targets

    build("xcit_nano_12_p16_224", work / "nano", weights=work / "nano.safetensors", force=True)
    # made for NPUs (every op integer): on a CPU it runs on LiteRT's builtin int16 kernels (no goal)
    npu_targets = sorted(n for n, spec in all_targets().items() if spec.mode == "aeq-full")
    names = sorted(set(all_targets()) - set(npu_targets))
    arts = _convert(work / "nano", sorted(all_targets()), work / "nano-art", None)
    result = bench([arts[n].path for n in names], BenchOptions(threads=(2,), iterations=iterations, memory=False))
    ms = {t.name: t.median_ms for t in result.timings}
    # the NPU target on a CPU (builtin integer kernels, ~40x float) in a run of its own: taking turns with
    # the CPU targets, its long calls changed their ratios by a few hundredths (measured)
    npu = bench([arts[n].path for n in ("tflite-fp16", *npu_targets)],
                BenchOptions(threads=(2,), iterations=max(5, iterations // 6), memory=False))
    npu_ms = {t.name: t.median_ms for t in npu.timings}
    print(f"\nnano p16 224 (seeded timm weights), batch 1, 2 threads, {iterations} timed calls each, "
          "round-robin (one run)")
    print(f"{'artifact':20s} {'median ms':>9s} {'float artifact':>15s} {'x float':>8s}  goal")
    for n in names:
        base = FLOAT_OF.get(n)
        if base is None:
            print(f"{n:20s} {ms[n]:9.2f}")
            continue
        ratio = ms[n] / ms[base]
        goal = LATENCY_GOAL.get(all_targets()[n].backend, 0.8 if _vnni(result.machine) else 1.1)
        print(f"{n:20s} {ms[n]:9.2f} {base:>15s} {ratio:8.2f}  <= {goal} {'met' if ratio <= goal else 'MISSED'}")
    for n in npu_targets:
        print(f"{n:20s} {npu_ms[n]:9.2f} {'tflite-fp16':>15s} {npu_ms[n] / npu_ms['tflite-fp16']:8.2f}  none (NPU "
              "target: on this CPU, LiteRT's builtin int16 kernels; a run of its own)")
    for n in sorted(all_targets()):
        if all_targets()[n].backend == "tflite":
            d = json.loads((arts[n].path / "manifest.json").read_text())["runtime_defaults"]
            print(f"XNNPACK {n}: {d['xnnpack_partitions']} partitions, {d['builtin_nodes']} of {d['nodes']} nodes "
                  f"on builtin kernels ({', '.join(d['builtin_ops']) or 'none'})")


def nano_weights(path: Path) -> None:
    """Seeded timm nano weights as safetensors. Before TensorFlow is imported: torch's triton import
    segfaulted in a process that had loaded TensorFlow 2.21 first (measured)."""
    from safetensors.torch import save_file
    from support.timm_ref import seeded_timm_model

    model = seeded_timm_model("xcit_nano_12_p16_224", seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def _vnni(machine: dict) -> bool:
    return any("vnni" in f or f in ("asimddp", "i8mm") for f in machine.get("isa", []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    if not args.skip_latency:
        nano_weights(work / "nano.safetensors")
    from xcit_edge.util.tfimport import import_tensorflow_quietly

    import_tensorflow_quietly()
    if not args.skip_accuracy:
        accuracy(args.images, work)
    if not args.skip_latency:
        latency(args.iterations, work)


if __name__ == "__main__":
    main()
