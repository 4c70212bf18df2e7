"""Evidence for the TFLite int8 policy: which XCiT ops can be int8 and which must stay float.

Builds the trained fixture (tests/fixtures), converts it to full-integer TFLite under several
`keep_float` policies, and reports for each: whether stock LiteRT (with its default XNNPACK
delegate) runs it, accuracy on 500 held-out synthetic images, top-1 agreement and cosine
against the float32 source, and model size; then the onnx-int8 and openvino-int8 targets on the
same model and data, for comparison.

    python benchmarks/int8_policy.py [--images 500] [--calib 200] [--fuse on|off|both]

With `--fuse both` every policy runs on the fused-XCA graph and on the graph as the source
wrote it (`--no-fuse`), side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from xcit_edge.util.tfimport import import_tensorflow_quietly

POLICIES = {
    "all-int8": [],
    "float: BATCH_MATMUL": ["BATCH_MATMUL"],
    "float: layernorm ops": ["SQUARED_DIFFERENCE", "RSQRT", "MEAN"],
    "float: l2-normalize ops": ["SUM", "SQRT", "MAXIMUM", "DIV"],
    "float: l2norm+BATCH_MATMUL": ["SUM", "SQRT", "MAXIMUM", "DIV", "BATCH_MATMUL"],
    "float: l2norm+SOFTMAX": ["SUM", "SQRT", "MAXIMUM", "DIV", "SOFTMAX"],
    "float: SOFTMAX": ["SOFTMAX"],
    "float: GELU": ["GELU"],
    "float: attention (bmm+softmax+l2norm)": ["BATCH_MATMUL", "SOFTMAX", "SUM", "SQRT", "MAXIMUM", "DIV"],
    "float: l2norm+layernorm": ["SUM", "SQRT", "MAXIMUM", "DIV", "SQUARED_DIFFERENCE", "RSQRT", "MEAN"],
    "float: l2norm+GELU": ["SUM", "SQRT", "MAXIMUM", "DIV", "GELU"],
    "float: l2norm+layernorm+GELU": ["SUM", "SQRT", "MAXIMUM", "DIV", "SQUARED_DIFFERENCE", "RSQRT", "MEAN", "GELU"],
    "float: l2norm+layernorm+GELU+softmax": ["SUM", "SQRT", "MAXIMUM", "DIV", "SQUARED_DIFFERENCE", "RSQRT", "MEAN",
                                            "GELU", "SOFTMAX"],
    # every op XNNPACK has no int8 kernel for, so the whole model runs delegated (benchmarks/peers.py: 5.8x faster)
    "float: XNNPACK-int8-unsupported": ["SUM", "SQRT", "MAXIMUM", "DIV", "SQUARED_DIFFERENCE", "RSQRT", "NEG",
                                        "GELU", "BATCH_MATMUL", "SOFTMAX"],
    "float: l2norm+layernorm+MUL+ADD": ["SUM", "SQRT", "MAXIMUM", "DIV", "SQUARED_DIFFERENCE", "RSQRT", "MEAN",
                                        "MUL", "ADD"],
}
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "xcit_fixture_4_p8_64.safetensors"


def _run(tflite, path: Path, x: np.ndarray):
    """Outputs and how they ran: with XNNPACK ('yes'), only without it ('no'), or not at all."""
    try:
        return tflite.run(tflite.load(path), x), "yes"
    except RuntimeError:
        pass
    try:
        return tflite.run(tflite._interpreter(path, delegates=False), x), "no"
    except RuntimeError as e:
        return None, f"fails ({str(e).split('.')[0][:40]})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--mode", default="full-integer", choices=["full-integer", "int16x8"])
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of the policy names")
    ap.add_argument("--fuse", default="on", choices=["on", "off", "both"], help="XCA fusion of the graph")
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    import_tensorflow_quietly()
    from xcit_edge.data.calibration import normalize
    from xcit_edge.data.synthetic import make_images
    from xcit_edge.graph import prepare
    from xcit_edge.model.build import build

    tmp = Path(tempfile.mkdtemp(prefix="int8-policy-"))
    build("xcit_fixture_4_p8_64", tmp / "sm", weights=FIXTURE)
    kinds = {"on": ["fused"], "off": ["unfused"], "both": ["fused", "unfused"]}[args.fuse]
    graphs = {k: prepare(tmp / "sm", fuse=k == "fused") for k in kinds}
    first = graphs[kinds[0]]
    calib = normalize(make_images(args.calib, 64, seed=10)[0], first.preprocessing)
    pix, labels = make_images(args.images, 64, seed=11)
    x = normalize(pix, first.preprocessing)
    ref = first.run(x)
    print(f"fp32 source accuracy: {(ref.argmax(1) == labels).mean():.4f} on {args.images} images")
    print(f"{'policy':48s} {'runs(XNNPACK)':>13s} {'acc':>7s} {'drop':>6s} {'agree':>7s} {'cosine':>8s} {'KB':>6s}")
    data = (calib, x, ref, labels)
    for kind, graph in graphs.items():
        _policies(graph, kind, args, data, tmp / kind)
    for kind, graph in graphs.items():
        _others(graph, kind, data, tmp / kind)


def _policies(graph, kind: str, args, data, tmp: Path) -> None:
    from xcit_edge.backends import tflite
    from xcit_edge.metrics import agreement
    from xcit_edge.targets import all_targets

    calib, x, ref, labels = data
    base = all_targets()["tflite-int8"]
    for name in args.policies.split(","):
        spec = dataclasses.replace(base, quantization={**base.quantization, "keep_float": POLICIES[name],
                                                       "mode": args.mode})
        d = tmp / name.replace(" ", "_").replace(":", "").replace("(", "").replace(")", "").replace("+", "_")
        d.mkdir(parents=True)
        tflite.convert(graph, spec, calib, d)
        out, runs = _run(tflite, d / spec.file, x)
        kb = (d / spec.file).stat().st_size / 1024
        if out is None:
            print(f"{kind + ' ' + name:48s} {runs:>13s}  (does not run: {tflite.float_ops(d / spec.file)} in float)",
                  flush=True)
            continue
        _row(f"{kind} {name}", runs, agreement(out, ref, labels), kb)


def _others(graph, kind: str, data, tmp: Path) -> None:
    """The other int8 targets on the same model and data, for comparison."""
    from xcit_edge.backends import backend
    from xcit_edge.metrics import agreement
    from xcit_edge.targets import all_targets

    calib, x, ref, labels = data
    for target in ("onnx-int8", "openvino-int8"):
        spec = all_targets()[target]
        mod = backend(spec.backend)
        d = tmp / target
        d.mkdir(parents=True)
        conv = mod.convert(graph, spec, calib, d)
        m = agreement(mod.run(mod.load(d / spec.file, spec), x), ref, labels)
        _row(f"{kind} target {target}", "n/a", m, sum((d / f).stat().st_size for f in conv.files) / 1024)


def _row(name: str, runs: str, m: dict, kb: float) -> None:
    print(f"{name:48s} {runs:>13s} {m['accuracy']:7.4f} {m['top1_drop']:6.2f} {m['top1_agreement']:7.4f} "
          f"{m['cosine_mean']:8.5f} {kb:6.0f}", flush=True)


if __name__ == "__main__":
    main()
