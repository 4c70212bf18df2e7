"""The README's validate and --max-drop figures, on the trained fixture (run on demand, ~4 minutes).

    .venv/bin/python benchmarks/validation.py [--keep DIR]

1. The fixture (tests/fixtures) as a SavedModel; 200 calibration images (seed 10) and 300
   held-out images (seed 11) the fixture never saw.
2. `convert --target all`, then `validate` of every artifact against the source on the held-out
   images (the table the README shows), with a report.
3. Sabotage: 5 % noise on every weight matrix, and classes 0/1 swapped in the head; each converted
   to `onnx` and validated against the good source (both must fail, with the fault localized).
4. The feature-extractor fixture: every target validated on features (cosine, NN recall@5).
5. `convert --max-drop 0` for every int8 target on the quantization stress fixture (`model/stress.py`).
Everything goes through the CLI, as a user would run it; the output is printed as it comes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.timm_ref, the tests' reference

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "xcit_edge.cli", "-q"]
WEIGHTS = ROOT / "tests" / "fixtures" / "xcit_fixture_4_p8_64.safetensors"


def xe(*args, check: bool = True) -> int:
    """Run the CLI, print its stdout (the report tables), return its exit code."""
    cmd = [*CLI, *map(str, args)]
    print("$ xcit-edge " + " ".join(map(str, args)), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    print(proc.stdout.rstrip())
    print(f"(exit {proc.returncode}, {time.perf_counter() - t0:.1f} s)\n", flush=True)
    if check and proc.returncode not in (0, 1):
        sys.exit(proc.stderr[-2000:])
    return proc.returncode


def sabotage(work: Path) -> dict[str, Path]:
    from safetensors.numpy import load_file, save_file
    from support.timm_ref import sabotaged

    paths = {}
    for name, weights in sabotaged(load_file(WEIGHTS)).items():
        save_file(weights, work / f"{name}.safetensors")
        paths[name] = work / f"{name}.safetensors"
    return paths


def main(work: Path) -> None:
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    from xcit_edge.data.synthetic import make_images

    for name, n, seed in (("calib", 200, 10), ("held", 300, 11)):
        px, lab = make_images(n, 64, seed=seed)
        np.savez(work / f"{name}.npz", images=px, labels=lab)
    fx, cal, held = work / "fixture", work / "calib.npz", work / "held.npz"
    xe("build", "xcit_fixture_4_p8_64", "--weights", WEIGHTS, "--out", fx, "--force")
    xe("convert", fx, "--target", "all", "--out", work / "art", "--calibration", cal, "--force")
    xe("validate", *sorted((work / "art").iterdir()), "--source", fx, "--calibration", held,
       "--report", work / "report")
    for name, weights in sabotage(work).items():
        xe("build", "xcit_fixture_4_p8_64", "--weights", weights, "--out", work / name, "--force")
        xe("convert", work / name, "--target", "onnx", "--out", work / f"art-{name}", "--force")
        xe("validate", work / f"art-{name}" / "onnx", "--source", fx, "--calibration", held,
           "--report", work / f"report-{name}")
    fe = work / "fixture-features"
    xe("build", "xcit_fixture_4_p8_64", "--weights", WEIGHTS, "--features", "--out", fe, "--force")
    xe("convert", fe, "--target", "all", "--out", work / "art-fe", "--calibration", cal, "--force")
    xe("validate", *sorted((work / "art-fe").iterdir()), "--source", fe, "--calibration", held, "--no-localize")
    from safetensors.numpy import load_file, save_file

    from xcit_edge.model.stress import stress_weights

    save_file(stress_weights(load_file(str(WEIGHTS))), str(work / "stress.safetensors"))
    xe("build", "xcit_fixture_4_p8_64", "--weights", work / "stress.safetensors", "--out", work / "stress", "--force")
    for target in ("onnx-int8", "openvino-int8", "tflite-dynamic-int8", "tflite-int8"):  # --max-drop 0: every top-1
        xe("convert", work / "stress", "--target", target, "--max-drop", 0, "--out", work / f"md-{target}",
           "--calibration", cal, "--force")
    print(f"reports: {work}/report*/report.html")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="Work in this directory and keep it (default: a temp dir).")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        main(args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
