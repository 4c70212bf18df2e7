"""Where a TFLite artifact spends its time, stage by stage: a cut-off profile in LiteRT.

    python benchmarks/tflite_profile.py MODEL.tflite [MODEL.tflite ...] [--iterations 150]

LiteRT's Python API has no per-op profiler, so each model is cut after the last op of each stage (patch
embedding, every patch block, the class-attention blocks and head: our Keras XCiT's layer names), the cut
model is timed with LiteRT's default delegate (XNNPACK) on 2 threads, and a stage's cost is the difference
between consecutive cuts. Cutting changes what XNNPACK fuses at the cut, so a single stage's figure is
rough (tens of microseconds); totals and stage-by-stage comparisons of two models are what it is for.
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np

STAGES = [("patch embedding", r"/pos_embed_1/add$")] + [(f"block {i}", rf"/blocks\.{i}_1/add_2$") for i in range(24)]


def _cuts(data: bytes) -> list[tuple[str, int]]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=data,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    names = {t["index"]: t["name"].split(";")[0] for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    cuts = []
    for stage, pattern in STAGES:
        hits = [k + 1 for k, op in enumerate(ops) if re.search(pattern, names[op["outputs"][0]])]
        if hits:
            cuts.append((stage, max(hits)))
    return [*cuts, ("class attention + head", len(ops))]


def _timed(model, ops: list, k: int, iterations: int) -> float:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    sub = model.subgraphs[0]
    sub.operators, sub.outputs = ops[:k], [ops[k - 1].outputs[0]]
    interp = Interpreter(model_content=bytes(fbu.convert_object_to_bytearray(model)), num_threads=2)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.random.default_rng(0).standard_normal(inp["shape"]).astype(inp["dtype"]))
    for _ in range(10):
        interp.invoke()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def profile(path: str, iterations: int) -> list[tuple[str, float]]:
    """(stage, cumulative median ms) for the model at `path`."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    data = open(path, "rb").read()
    model = fbu.read_model_from_bytearray(bytearray(data))
    model.signatureDefs = []
    ops = list(model.subgraphs[0].operators)
    return [(stage, _timed(model, ops, k, iterations)) for stage, k in _cuts(data)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--iterations", type=int, default=150)
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    results = [profile(p, args.iterations) for p in args.models]
    print(f"{'stage':24s}" + "".join(f" {'model ' + str(i + 1):>14s}" for i in range(len(results))) + "   (ms)")
    for row, stage in enumerate(s for s, _ in results[0]):
        cells = []
        for res in results:
            before = res[row - 1][1] if row else 0.0
            cells.append(f" {res[row][1] - before:14.3f}" if row < len(res) else f" {'':14s}")
        print(f"{stage:24s}" + "".join(cells))
    print(f"{'total':24s}" + "".join(f" {res[-1][1]:14.3f}" for res in results))
    for i, p in enumerate(args.models):
        print(f"model {i + 1}: {p}")


if __name__ == "__main__":
    main()
