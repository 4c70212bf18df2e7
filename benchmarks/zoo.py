"""Every seed architecture, every target: conversion seconds and peak RSS, agreement with timm, latency, FLOPs.

For each architecture of the TF Hub seed collection (`model.zoo.HUB_SEED_NAMES`; `--features` also the
`_fe` feature extractors) a timm model with seeded weights is imported (`xcit-edge build --weights`), then
converted to each target in its own `xcit-edge convert` process (so its seconds and peak RSS are its own:
`benchmarks/convert.py`'s wrapper). Each artifact is then run in its runtime on seeded inputs and compared
with timm itself (cosine of the outputs, and the relative max error `max|a - t| / max|t|` of the float
targets), and timed at batch 1 with the runtime's default threads (median of `--iterations` runs after
two warm-ups, in this process, one artifact at a time).

FLOPs per image are measured, not taken from a table: the `onnx` artifact with its XCA functions inlined,
shapes inferred at batch 1, counting 2·M·K·N per MatMul/Gemm and 2·(output elements)·(kernel size)·
(input channels / groups) per Conv; element-wise ops, normalizations and softmax are left out (under 1 %
for XCiT). The SavedModel's bytes and the memory goal of issue 19 (peak <= 1.5 GiB + 6 x SavedModel)
are printed beside each peak.

    python benchmarks/zoo.py [--archs xcit_nano_12_p16_224,...|all] [--targets all] [--features]
                             [--iterations 10] [--json results.json]

Slow for the large models on 2 cores (hours for all of them with every int8 target): pick `--archs`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.timm_ref, the tests' reference

from convert import measured, run  # benchmarks/convert.py: one process per measurement

GIB = 1 << 30
CHECK_IMAGES = 4


def onnx_flops(path: Path) -> float:
    """FLOPs of one image through the ONNX model at `path` (MatMul, Gemm and Conv; see the module doc)."""
    import onnx
    from onnx import inliner, shape_inference

    model = inliner.inline_local_functions(onnx.load(str(path)))
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0.0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out or 0 in out:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            k = a[-1] if a and a[-1] else 0
            if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute):
                k = a[0]
            total += 2.0 * float(np.prod(out)) * k
        elif node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w and all(w):
                total += 2.0 * float(np.prod(out)) * float(np.prod(w[1:]))
    return total


def _latency_ms(mod, session, x: np.ndarray, iterations: int) -> float:
    for _ in range(2):
        mod.run(session, x)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        mod.run(session, x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _check(art: Path, x: np.ndarray, want: np.ndarray, iterations: int) -> dict:
    """The artifact against timm on `x` (its input contract: float NHWC), and its batch-1 latency."""
    from xcit_edge.artifact.open import open_artifact
    from xcit_edge.metrics import cosine

    opened = open_artifact(art)
    mod = opened.module
    session = opened.load()
    if opened.manifest.io.input.dtype == "uint8":
        raise SystemExit(f"{art}: a baked-preprocessing artifact; zoo.py feeds float inputs")
    got = mod.run(session, x)
    row = {"cosine": float(np.mean(cosine(got, want))),
           "rel_max_err": float(np.abs(got - want).max() / np.abs(want).max())}
    row["ms_b1"] = _latency_ms(mod, session, x[:1], iterations)
    return row


def _one_arch(name: str, features: bool, targets: list, work: Path, iterations: int) -> list[dict]:
    import torch
    from safetensors.torch import save_file
    from support.timm_ref import images, seeded_timm_model, timm_forward

    from xcit_edge.model.zoo import get_config
    from xcit_edge.util.memory import tree_bytes

    cli = [sys.executable, "-m", "xcit_edge.cli", "--quiet"]
    model = seeded_timm_model(name)
    ckpt = work / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    label = f"{name}_fe" if features else name
    sm = work / label
    t0 = time.perf_counter()
    run([*cli, "build", label, "--weights", str(ckpt), "--out", str(sm)])
    build_s = time.perf_counter() - t0
    size = get_config(name).img_size
    x = images(CHECK_IMAGES, size)
    with torch.inference_mode():
        want = timm_forward(model, x, pre_logits=features)
    sm_bytes = tree_bytes(sm)
    goal = 1.5 * GIB + 6 * sm_bytes
    flops = None
    rows = []
    for spec in targets:
        out = work / f"{label}-{spec.name}"
        proc, seconds, peak = measured([*cli, "convert", str(sm), "--target", spec.name, "--out", str(out),
                                        "--calibration", "sample"])
        row = {"arch": label, "target": spec.name, "savedmodel_mb": sm_bytes / 1e6, "build_s": build_s,
               "convert_s": seconds, "peak_mib": peak, "goal_mib": goal / 2**20}
        if proc.returncode:
            err = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "internal error:"))]
            row["error"] = (err or proc.stderr.splitlines()[-1:] or ["?"])[-1][:200]
        else:
            row.update(_check(out / spec.name, x, want, iterations))
            if spec.name == "onnx":
                flops = onnx_flops(out / spec.name / spec.file)
        rows.append(row)
        _print_row(row)
    for row in rows:
        row["gflops"] = flops / 1e9 if flops else None
        if flops and "error" not in row:
            row["s_per_gflop"] = row["convert_s"] / (flops / 1e9)
    if flops:
        print(f"{label}: {flops / 1e9:.2f} GFLOPs per image (measured on the onnx artifact)", flush=True)
    return rows


HEADER = (f"{'model':26s} {'target':20s} {'conv s':>7s} {'peak MiB':>9s} {'goal MiB':>9s} {'cosine':>9s} "
          f"{'rel err':>8s} {'ms b1':>7s}")


def _print_row(row: dict) -> None:
    if "error" in row:
        print(f"{row['arch']:26s} {row['target']:20s} FAILED: {row['error']}", flush=True)
        return
    print(f"{row['arch']:26s} {row['target']:20s} {row['convert_s']:7.1f} {row['peak_mib']:9.0f} "
          f"{row['goal_mib']:9.0f} {row['cosine']:9.6f} {row['rel_max_err']:8.2g} {row['ms_b1']:7.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="xcit_nano_12_p16_224", help="comma-separated seed names, or all")
    ap.add_argument("--targets", default="all")
    ap.add_argument("--features", action="store_true", help="also the _fe feature extractors")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()
    from xcit_edge.bench import machine_line
    from xcit_edge.model.zoo import HUB_SEED_NAMES
    from xcit_edge.targets import parse_targets

    print(machine_line(), flush=True)
    archs = list(HUB_SEED_NAMES) if args.archs == "all" else args.archs.split(",")
    targets = parse_targets(args.targets)
    work = Path(tempfile.mkdtemp(prefix="bench-zoo-"))
    print(HEADER, flush=True)
    rows = []
    for name in archs:
        for features in (False, True) if args.features else (False,):
            rows += _one_arch(name, features, targets, work, args.iterations)
            if args.json:
                args.json.write_text(json.dumps({"machine": machine_line(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
