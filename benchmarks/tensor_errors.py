"""Where a full-integer TFLite model loses accuracy: every tensor's error against the float model it came from.

    python benchmarks/tensor_errors.py [--images 4] [--without layernorms,class_attention,equalize] [--top 25]

Builds the trained fixture, converts it with the `tflite-int8-full` recipe (optionally without some of its
int16 placements or the LayerNorm equalization), runs the float model (after the same exact rewrites and
equalization) and the quantized one on LiteRT's builtin kernels with every intermediate tensor kept, and prints,
for the tensors with the largest error, the op, the activation type, the relative error ||q - f|| / ||f|| per
image (dequantized), the largest |value| in float and the quantization step. Calibration: the shipped sample
(what command 1 uses); images: held-out generated ones (seed 11). This is how the LayerNorm internals and the
class-token concatenation were found (README "int8").
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
from int8_policy import FIXTURE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--without", default="", help="comma-separated: layernorms, class_attention, equalize")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    from xcit_edge.bench import machine_line
    from xcit_edge.util.tfimport import import_tensorflow_quietly

    print(machine_line(), flush=True)
    import_tensorflow_quietly()
    from xcit_edge.backends import tflite
    from xcit_edge.data.calibration import load_calibration, normalize
    from xcit_edge.data.synthetic import make_images
    from xcit_edge.graph import prepare
    from xcit_edge.model.build import build
    from xcit_edge.targets import all_targets

    tmp = Path(tempfile.mkdtemp(prefix="tensor-errors-"))
    build("xcit_fixture_4_p8_64", tmp / "sm", weights=FIXTURE)
    graph = prepare(tmp / "sm")
    pre = graph.preprocessing
    calib = load_calibration("sample", pre).model_ready(pre, False)
    x = normalize(make_images(args.images, 64, seed=11)[0], pre)
    off = {w.strip() for w in args.without.split(",") if w.strip()}
    base = all_targets()["tflite-int8-full"]
    spec = dataclasses.replace(base, quantization={
        **base.quantization, "int16_layernorms": "layernorms" not in off,
        "int16_class_attention": "class_attention" not in off, "equalize_layernorms": "equalize" not in off})
    tflite.convert(graph, spec, calib, tmp)
    floats = tflite.float_model(graph, integer_friendly=True)
    if spec.quantization["equalize_layernorms"]:
        floats = tflite._equalized(floats, calib, spec.name)[0]
    rows = _errors(floats, (tmp / spec.file).read_bytes(), x)
    print(f"{'op':18s} {'type':6s} {'rel. error per image':>{7 * len(x)}s} {'max|f|':>8s} {'step':>9s}  tensor")
    for kind, dtype, rel, amax, step, name in sorted(rows, key=lambda r: -max(r[2]))[:args.top]:
        print(f"{kind:18s} {dtype:6s} {' '.join(f'{r:6.3f}' for r in rel)} {amax:8.3g} {step:9.3g}  {name[-70:]}")


def _interpreter(data: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=data, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return interp


def _errors(floats: bytes, quantized: bytes, x: np.ndarray) -> list[tuple]:
    """(op, activation type, relative error per image, max |float value|, step, tensor name) per op output
    present in both models."""
    fi, qi = _interpreter(floats), _interpreter(quantized)
    by_name = {t["name"]: t for t in qi.get_tensor_details()}
    f_tensors = {t["index"]: t for t in fi.get_tensor_details()}
    q_in = qi.get_input_details()[0]
    found: dict[str, list] = {}
    for image in x:
        fi.set_tensor(fi.get_input_details()[0]["index"], image[None])
        fi.invoke()
        scale, zero = q_in["quantization"]
        info = np.iinfo(q_in["dtype"])
        qi.set_tensor(q_in["index"], np.clip(np.round(image[None] / scale) + zero, info.min, info.max)
                      .astype(q_in["dtype"]))
        qi.invoke()
        for op in fi._get_ops_details():
            name = f_tensors[op["outputs"][0]]["name"]
            if name not in by_name:
                continue
            t = by_name[name]
            f = fi.get_tensor(op["outputs"][0]).astype(np.float64)
            step, zero_point = t["quantization"]
            q = qi.get_tensor(t["index"]).astype(np.float64)
            q = (q - zero_point) * step if step else q
            rel = float(np.linalg.norm(q - f) / (np.linalg.norm(f) + 1e-12))
            entry = found.setdefault(name, [op["op_name"], t["dtype"].__name__, [], 0.0, step, name])
            entry[2].append(rel)
            entry[3] = max(entry[3], float(np.abs(f).max()))
    return [tuple(v) for v in found.values()]


if __name__ == "__main__":
    main()
