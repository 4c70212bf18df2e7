"""Evidence for the NPU target's activation width: where int8 activations hold and where int16 is needed.

    python benchmarks/npu_bits.py [--images 500] [--calib 200] [--calibration synthetic|sample]

Builds the trained fixture and its quantization stress variant (`xcit_edge/model/stress.py`), converts each
with the `tflite-16x8-full` recipe (every op integer, ai-edge-quantizer) under activation policies, from int8
everywhere (int16 only in XCA's L2 normalization, without which LiteRT's int8 DIV refuses a divisor
quantized to zero) to int16 everywhere (`tflite-16x8-full`), with LayerNorm equalization
(`backends/tflite/equalize.py`) and int16 LayerNorm internals and class attention (`backends/tflite/int16.py`)
added one at a time between them (all three: `tflite-int8-full`), and reports accuracy, drop, top-1 agreement
and cosine against the float32 source on held-out images (seed 11; calibration seed 10). Every int8 target
promises cosine >= 0.99 and a drop <= 1 point on both fixtures.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from int8_policy import FIXTURE, _row, _run

XCA_NORM = (r".*xcit_edge/xca_\d+/(q_sq|k_sq|q_sumsq|k_sumsq|q_l2|k_l2|q_norm|k_norm|q_norm_col|q_scale|k_scale|"
            r"gram|gram_rows|logits)")
BASE = {"activation_bits": 8, "int16_layers": [XCA_NORM], "equalize_layernorms": False, "int16_layernorms": False,
        "int16_class_attention": False}
POLICIES = {  # name -> the quantization options over tflite-16x8-full's
    "int8, int16 in XCA's L2 norm": BASE,
    "... + LayerNorms equalized": {**BASE, "equalize_layernorms": True},
    "... + LayerNorm internals int16": {**BASE, "equalize_layernorms": True, "int16_layernorms": True},
    "... + class attn int16 (tflite-int8-full)": {**BASE, "equalize_layernorms": True, "int16_layernorms": True,
                                                  "int16_class_attention": True},
    "equalized, class attn int16, LayerNorms int8": {**BASE, "equalize_layernorms": True,
                                                     "int16_class_attention": True},
    "int16 everywhere (tflite-16x8-full)": {"activation_bits": 16, "int16_layers": []},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--calibration", choices=["synthetic", "sample"], default="synthetic",
                    help="calibration images: --calib generated ones (seed 10) or the shipped sample (80, as the demo)")
    args = ap.parse_args()
    from xcit_edge.bench import machine_line
    from xcit_edge.util.tfimport import import_tensorflow_quietly

    print(machine_line(), flush=True)
    import_tensorflow_quietly()
    from safetensors.numpy import load_file, save_file

    from xcit_edge.data.calibration import load_calibration, normalize
    from xcit_edge.data.synthetic import make_images
    from xcit_edge.graph import prepare
    from xcit_edge.model.build import build
    from xcit_edge.model.stress import stress_weights

    tmp = Path(tempfile.mkdtemp(prefix="npu-bits-"))
    save_file(stress_weights(load_file(str(FIXTURE))), str(tmp / "stress.safetensors"))
    print(f"{'model / policy':56s} {'runs(XNNPACK)':>13s} {'acc':>7s} {'drop':>6s} {'agree':>7s} {'cosine':>8s} "
          f"{'KB':>6s}")
    for name, weights in (("trained", FIXTURE), ("stress", tmp / "stress.safetensors")):
        build("xcit_fixture_4_p8_64", tmp / name, weights=weights)
        graph = prepare(tmp / name)
        pre = graph.preprocessing
        calib = (load_calibration("sample", pre).model_ready(pre, False) if args.calibration == "sample"
                 else normalize(make_images(args.calib, 64, seed=10)[0], pre))
        pix, labels = make_images(args.images, 64, seed=11)
        x = normalize(pix, graph.preprocessing)
        _policies(graph, name, (calib, x, graph.run(x), labels), tmp / f"{name}-art")


def _policies(graph, model: str, data, tmp: Path) -> None:
    from xcit_edge.backends import tflite
    from xcit_edge.metrics import agreement
    from xcit_edge.targets import all_targets

    calib, x, ref, labels = data
    base = all_targets()["tflite-16x8-full"]
    for i, (name, options) in enumerate(POLICIES.items()):
        spec = dataclasses.replace(base, quantization={**base.quantization, **options})
        d = tmp / str(i)
        d.mkdir(parents=True)
        tflite.convert(graph, spec, calib, d)
        out, runs = _run(tflite, d / spec.file, x)
        if out is None:
            print(f"{model + ' ' + name:56s} {runs:>13s}", flush=True)
            continue
        _row(f"{model} {name}", runs, agreement(out, ref, labels), (d / spec.file).stat().st_size / 1024)


if __name__ == "__main__":
    main()
