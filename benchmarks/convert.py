"""Conversion cost per target: wall time and peak memory (RSS) of `xcit-edge convert`.

Each (model, target) pair runs in a fresh process so its peak RSS is its own; times include
loading the SavedModel, freezing, calibration decoding and the post-conversion check, i.e.
what a user waits for. Ratios are against the `onnx` conversion of the same model, measured
in the same run.

    python benchmarks/convert.py [--models xcit_nano_12_p16_224,xcit_tiny_24_p16_224] [--targets all]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="xcit_nano_12_p16_224,xcit_tiny_24_p16_224")
    ap.add_argument("--targets", default="all")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "xcit_edge.cli", "--quiet"]
    from xcit_edge.targets import parse_targets

    targets = [t.name for t in parse_targets(args.targets)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    print(f"{'model':24s} {'target':14s} {'seconds':>8s} {'x onnx':>7s} {'peak MiB':>9s} {'MB':>8s}")
    for model in args.models.split(","):
        sm = tmp / model
        run([*cli, "build", model, "--out", str(sm)])
        base = None
        for target in ["onnx"] + [t for t in targets if t != "onnx"]:
            out = tmp / f"{model}-{target}"
            # ru_maxrss of children is a running maximum over all of them: measure each in its own
            # wrapper process so the figure is this conversion's peak.
            wrapper = [sys.executable, "-c",
                       "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True); "
                       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)",
                       *cli, "convert", str(sm), "--target", target, "--out", str(out), "--json"]
            t0 = time.perf_counter()
            proc = subprocess.run(wrapper, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - t0
            if proc.returncode:
                err = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "internal error:"))]
                print(f"{model:24s} {target:14s} FAILED: {(err or ['?'])[-1][:150]}", flush=True)
                continue
            peak = int(proc.stderr.strip().splitlines()[-1]) / 1024
            entry = json.loads(proc.stdout)["artifacts"][0]
            size = sum(f["bytes"] for f in json.loads(Path(entry["manifest"]).read_text())["artifact"]["files"])
            base = base or seconds
            print(f"{model:24s} {target:14s} {seconds:8.1f} {seconds / base:7.2f} {peak:9.0f} {size / 1e6:8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
