"""Resident memory after each step of `graph.prepare` (load, freeze, the canonical rewrites, XCA fusion, the
adapted graph, a self-contained GraphDef of it): the prepare part of `xcit_edge/util/memory.py`'s model term.

The steps are `graph/freeze.py`'s own, called in its order on a SavedModel built with seeded weights; VmRSS
and VmHWM (peak) are read from /proc/self/status after each, printed with their growth as a multiple of
the SavedModel's size. Linux only.

    python benchmarks/prepare_memory.py [--model xcit_small_12_p16_224] [--whole]

--whole: one `graph.prepare` call as the commands make it (objects dropped as prepare drops them), its peak.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


def _status() -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) << 10, int(fields["VmHWM"].split()[0]) << 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="xcit_small_12_p16_224")
    ap.add_argument("--whole", action="store_true", help="one prepare() call: its peak")
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    sm = tmp / "model"
    subprocess.run([sys.executable, "-m", "xcit_edge.cli", "--quiet", "build", args.model, "--out", str(sm)],
                   check=True)

    from xcit_edge.util.tfimport import import_tensorflow_quietly

    import_tensorflow_quietly()
    import gc

    from xcit_edge.graph import freeze as fz
    from xcit_edge.graph.rewrites import GraphSite, canonical
    from xcit_edge.graph.weights import freeze_signature
    from xcit_edge.model.savedmodel import read_metadata
    from xcit_edge.util.memory import tree_bytes

    size = tree_bytes(sm)
    rss0, _ = _status()
    print(f"{args.model}: SavedModel {size / 2**20:.0f} MiB")
    print(f"{'after':20s} {'RSS MiB':>8s} {'peak MiB':>9s} {'peak growth / model':>20s}")

    def report(step: str) -> None:
        rss, hwm = _status()
        print(f"{step:20s} {rss / 2**20:8.0f} {hwm / 2**20:9.0f} {(hwm - rss0) / size:20.1f}", flush=True)

    report("import")
    if args.whole:
        from xcit_edge.graph import prepare

        prepare(sm)
        report("prepare()")
        return
    loaded = fz._load(sm)
    report("load")
    _, sig = fz._pick_signature(loaded, sm, None)
    in_shape = fz._image_input(sig, sm)[1]
    fs = freeze_signature(sig)
    del loaded, sig
    gc.collect()
    report("freeze")
    in_tensor, out_tensor = fs.input_tensor, fs.output_tensors[0]
    frozen, _ = canonical(fs.frozen, GraphSite(in_tensor, in_shape, [fz._node_name(out_tensor)]))
    report("canonical rewrites")
    meta = read_metadata(sm)
    frozen, _ = fz._fusion(sm, frozen, in_tensor, out_tensor, in_shape, meta, meta["arch"], False)
    report("xca fusion")
    final = fz._adapted(frozen, in_tensor, out_tensor, in_shape, "NHWC", fz.preprocessing_of(sm)[0], False)
    report("adapted")
    final.materialized()
    report("materialized")


if __name__ == "__main__":
    main()
