"""Conversion cost per target: wall time and peak memory (RSS) of `xcit-edge convert`.

Each (model, target) pair runs in a fresh process so its peak RSS is its own; times include
loading the SavedModel, freezing, calibration decoding and the post-conversion check, i.e.
what a user waits for. Ratios are against the `onnx` conversion of the same model, measured
in the same run. The last columns hold `convert`'s memory estimate (`xcit_edge/util/memory.py`, what
`--max-memory` is checked against) and measured peak / estimate: it should stay at or below 1.
The `all` row converts every target in one process, as users do. `--steps` also prints where each
conversion spent its time: the seconds between `convert`'s progress lines (preparing the graph step by step,
decoding, the source run on the check images, and per target tf2onnx, rewrites, quantizers, the checks).

    python benchmarks/convert.py [--models xcit_nano_12_p16_224,xcit_tiny_24_p16_224] [--targets all]
                                 [--source SAVEDMODEL] [--max-memory 40G] [--steps]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


_LINE = re.compile(r"^\[(\d+):(\d\d)\] (.*) \(\d+/\d+\)$")  # a progress line off a terminal: [m:ss] step (k/n)


def steps(stderr: str, total: float) -> list[tuple[str, float]]:
    """(step, seconds) from `convert`'s progress lines: each step lasts until the next line (the last until
    the process ended, `total` seconds after it started). Clock resolution: one second."""
    marks = [(int(m[1]) * 60 + int(m[2]), m[3]) for m in map(_LINE.match, stderr.splitlines()) if m]
    spans: dict[str, float] = {}
    for (t, name), (t_next, _) in zip(marks, [*marks[1:], (total, "")], strict=True):
        spans[name] = spans.get(name, 0.0) + max(0.0, t_next - t)
    return list(spans.items())


def measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `cmd` in its own wrapper process: (result, seconds, peak RSS MiB). ru_maxrss of children is a
    running maximum over all of them, so each measurement gets a fresh wrapper to be its own peak."""
    wrapper = [sys.executable, "-c",
               "import resource,subprocess,sys; r = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r)", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(wrapper, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    peak = int(proc.stderr.strip().splitlines()[-1]) / 1024 if proc.stderr.strip() else float("nan")
    return proc, seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="xcit_nano_12_p16_224,xcit_tiny_24_p16_224")
    ap.add_argument("--targets", default="all")
    ap.add_argument("--source", type=Path, help="an existing SavedModel of the (one) --models architecture, "
                    "instead of building it")
    ap.add_argument("--max-memory", help="passed to convert (to measure a run the estimate would refuse)")
    ap.add_argument("--steps", action="store_true", help="also print the seconds of each step of each conversion")
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    cli = [sys.executable, "-m", "xcit_edge.cli", *([] if args.steps else ["--quiet"])]
    from xcit_edge.convert import ConvertOptions, calibration_limit, convert_memory_factor
    from xcit_edge.model.zoo import get_config
    from xcit_edge.targets import parse_targets
    from xcit_edge.util.memory import estimate, tree_bytes

    specs = {t.name: t for t in parse_targets(args.targets)}
    targets = list(specs)
    (baseline,) = parse_targets("onnx")  # the ratios' baseline, converted first even when not asked for
    tmp = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    print(f"{'model':24s} {'target':14s} {'seconds':>8s} {'x onnx':>7s} {'peak MiB':>9s} {'MB':>8s} "
          f"{'est. MiB':>9s} {'peak/est':>8s}")
    for model in args.models.split(","):
        sm = args.source or tmp / model
        if not args.source:
            run([*cli, "build", model, "--out", str(sm)])
        size = get_config(model).img_size
        base = None
        for target in ["onnx"] + [t for t in targets if t != "onnx"] + (["all"] if len(targets) > 1 else []):
            chosen = list(specs.values()) if target == "all" else [specs.get(target) or baseline]
            est = estimate(tree_bytes(sm), (size, size), calibration_limit(chosen, ConvertOptions()),
                           model_factor=convert_memory_factor(chosen))
            target = ",".join(targets) if target == "all" else target
            out = tmp / f"{model}-{target}"
            proc, seconds, peak = measured([*cli, "convert", str(sm), "--target", target, "--out", str(out), "--json",
                                          *(["--max-memory", args.max_memory] if args.max_memory else [])])
            if proc.returncode:
                err = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "internal error:"))]
                print(f"{model:24s} {target:14s} FAILED: {(err or ['?'])[-1][:150]}", flush=True)
                continue
            entries = json.loads(proc.stdout)["artifacts"]
            mb = sum(f["bytes"] for e in entries
                     for f in json.loads(Path(e["manifest"]).read_text())["artifact"]["files"])
            base = base or seconds
            name = "all" if len(entries) > 1 else target
            print(f"{model:24s} {name:14s} {seconds:8.1f} {seconds / base:7.2f} {peak:9.0f} {mb / 1e6:8.1f} "
                  f"{est.total / 2**20:9.0f} {peak * 2**20 / est.total:8.2f}", flush=True)
            for name, secs in steps(proc.stderr, seconds) if args.steps else ():
                print(f"    {secs:7.0f} s  {name}", flush=True)


if __name__ == "__main__":
    main()
