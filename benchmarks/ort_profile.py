"""Where ONNX Runtime spends its time: kernel time per op type for each ONNX file given.

    python benchmarks/ort_profile.py A.onnx [B.onnx ...] [--runs 30] [--threads 2] [--size 224]

Uses ONNX Runtime's own profiler (one JSON trace per model, in a temp directory); prints the
mean kernel microseconds per run and, per op type, microseconds per run, share and node count.
NHWC or NCHW inputs are handled (a seeded normal image batch of 1).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter

import numpy as np


def profile(path: str, runs: int, threads: int, size: int) -> tuple[float, list[tuple[str, float, int]]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = f"{tempfile.mkdtemp(prefix='ort-profile-')}/trace"
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
    if inp.shape[1] == 3:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for _ in range(runs):
        sess.run(None, {inp.name: x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    time, count = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(time.values()) / runs
    return total, [(op, t / runs, count[op] // runs) for op, t in time.most_common()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    for path in args.models:
        total, rows = profile(path, args.runs, args.threads, args.size)
        print(f"{path}: {total:.0f} us kernel time per run")
        for op, us, n in rows[:16]:
            print(f"  {op:24s} {us:8.0f} us {100 * us / total:5.1f} %  {n:4d} nodes")


if __name__ == "__main__":
    main()
