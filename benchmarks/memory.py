"""Memory per decoded image of `reference` and `validate`: the slope behind `xcit_edge/util/memory.py`'s image factors.

Each command runs twice on the same model and seeded images (N1 and N2 images, each run in its own process);
the peak RSS difference over N2 - N1 is the per-image cost, printed as a multiple of one float32 input (the
unit of the image factor) beside the factor the estimate uses, and the measured peak / estimate of each run.

`--folder` writes the images as JPEG files in class folders instead of one .npz: a folder is decoded
one file at a time, and a set of more than `calibration.SPOOL_BYTES` of pixels streams (spooled to a temp
file, walked in batches), so with --images 2000,6000 at 224 px both runs stream and the slope is what a
streamed image costs (its outputs), not its pixels.

    python benchmarks/memory.py [--model xcit_nano_12_p16_224] [--images 100,400] [--folder]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from convert import measured, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="xcit_nano_12_p16_224")
    ap.add_argument("--images", default="100,400")
    ap.add_argument("--folder", action="store_true", help="JPEG files in class folders (streams when large)")
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    from xcit_edge.data.calibration import batch_images, spools
    from xcit_edge.data.synthetic import CLASSES, make_images, write_folder
    from xcit_edge.model.zoo import get_config
    from xcit_edge.util.memory import IMAGE_FACTOR, OUTPUT_BYTES, REFERENCE_IMAGE_FACTOR, estimate, tree_bytes

    n1, n2 = (int(v) for v in args.images.split(","))
    size = get_config(args.model).img_size
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    cli = [sys.executable, "-m", "xcit_edge.cli", "--quiet"]
    sm, art = tmp / "model", tmp / "out"
    run([*cli, "build", args.model, "--out", str(sm)])
    run([*cli, "convert", str(sm), "--target", "onnx", "--out", str(art)])
    if args.folder:
        data = tmp / "images"
        write_folder(data, per_class=-(-n2 // len(CLASSES)), size=size, seed=10)
    else:
        data = tmp / "images.npz"
        np.savez(data, images=make_images(n2, size, seed=10)[0])
    float_input = size * size * 3 * 4
    model_bytes = tree_bytes(sm)
    print(f"{'command':10s} {'images':>6s} {'peak MiB':>9s} {'est. MiB':>9s} {'peak/est':>8s}")
    for command, factor, loaded, outputs in (
            ("reference", REFERENCE_IMAGE_FACTOR, 0, 1),
            ("validate", IMAGE_FACTOR, 3 * (art / "onnx" / "model.onnx").stat().st_size, 2)):
        peaks = []
        for n in (n1, n2):
            base = [*cli, command]
            cmd = ([*base, str(sm), "--out", str(tmp / "ref.npz")] if command == "reference" else
                   [*base, str(art / "onnx"), "--source", str(sm), "--no-localize"])
            proc, _, peak = measured([*cmd, "--calibration", str(data), "--max-images", str(n)])
            if proc.returncode not in (0, 1):  # validate exits 1 when an artifact misses its tolerances
                raise SystemExit(f"{command} failed:\n{proc.stderr[-2000:]}")
            spooled = args.folder and spools(n, (size, size))  # an .npz is in memory whole
            held = min(n, batch_images((size, size))) if spooled else n
            est = estimate(model_bytes, (size, size), held, factor, loaded + outputs * OUTPUT_BYTES * n).total / 2**20
            print(f"{command:10s} {n:6d} {peak:9.0f} {est:9.0f} {peak / est:8.2f}", flush=True)
            peaks.append(peak)
        per_image = (peaks[1] - peaks[0]) * 2**20 / (n2 - n1)
        print(f"{command:10s} per image {per_image / 2**20:.2f} MiB = {per_image / float_input:.2f} x one float "
              f"input (the estimate uses {factor})", flush=True)


if __name__ == "__main__":
    main()
