"""Foreign SavedModels x targets: what `inspect`, `convert` and `validate` make of each converter's output.

Sources: our own Keras build and the SavedModels the real converters made (tests/fixtures/foreign/, from
the trained fixture at 96 px: onnx-tf 1.10 with the TF Hub recipe's NHWC wrapper and with NCHW input,
onnx2tf 1.29 and 2.6.9, each as classifier and feature extractor). With `--nano DIR`, also every
SavedModel in DIR made by `scripts/make_foreign.py --model nano` (seeded timm nano, seed 5), beside
our Keras build of the same weights.

For each source: the variant and layout `inspect` reads; `convert --target all` (calibrated on 64
generated labelled images); per target the XCA blocks fused in the artifact, and for fp32 targets the
relative max error against the source SavedModel (run in TensorFlow), for the others the minimum
cosine against timm (the independent reference); then `validate --source` on every artifact.

    .venv/bin/python benchmarks/foreign.py [--nano DIR] [--only NAME,...] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

with contextlib.suppress(ImportError):  # torch before TensorFlow (import-order crash otherwise)
    import timm  # noqa: F401
    import torch  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
FOREIGN = ROOT / "tests" / "fixtures" / "foreign"
TARGETS = ("onnx", "onnx-int8", "openvino", "openvino-int8", "tflite-fp16", "tflite-int8")


def _cli(*args) -> tuple[int, str]:
    from click.testing import CliRunner

    from xcit_edge.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout


def _timm(model: str):
    from conftest import FIXTURE_WEIGHTS
    from safetensors.torch import load_file
    from support.timm_ref import seeded_timm_model
    from timm.models.xcit import Xcit

    from xcit_edge.model.zoo import FIXTURE

    if model == "nano":
        return seeded_timm_model("xcit_nano_12_p16_224", seed=5), 224
    c = FIXTURE
    net = Xcit(img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
               num_heads=c.num_heads, num_classes=c.num_classes, eta=c.eta, tokens_norm=c.tokens_norm)
    net.load_state_dict(load_file(FIXTURE_WEIGHTS))
    return net.eval(), 96


def _keras(model: str, features: bool, work: Path) -> Path:
    """Our build of the same weights (the timm state dict imported), as the baseline row."""
    from safetensors.torch import save_file

    from xcit_edge.model.build import build
    from xcit_edge.model.zoo import FIXTURE

    net, size = _timm(model)
    weights = work / f"{model}.safetensors"
    state = {k: v.contiguous() for k, v in net.state_dict().items() if not (features and k.startswith("head."))}
    save_file(state, weights)
    out = work / (f"keras-{model}" + ("-fe" if features else ""))
    arch = "xcit_nano_12_p16_224" if model == "nano" else FIXTURE.name
    build(arch, out, weights=weights, features=features, img_size=size)
    return out


def _row(name: str, src: Path, model: str, features: bool, work: Path) -> dict:
    from conftest import rel_max_err, timm_forward

    from xcit_edge.backends import backend
    from xcit_edge.data.calibration import normalize
    from xcit_edge.data.preprocessing import timm_default
    from xcit_edge.data.synthetic import make_images
    from xcit_edge.graph import prepare
    from xcit_edge.metrics import agreement
    from xcit_edge.targets import all_targets

    net, size = _timm(model)
    pixels, labels = make_images(64, size, seed=10)
    cal = work / f"cal{size}.npz"
    np.savez(cal, images=pixels, labels=labels)
    code, out = _cli("inspect", src, "--json")
    info = json.loads(out) if code == 0 else {}
    row = {"source": name, "variant": info.get("variant"), "layout": info.get("layout"), "targets": {}}
    arts = work / f"out-{name}"
    code, out = _cli("--quiet", "convert", src, "--target", "all", "--out", arts, "--json", "--force",
                     "--calibration", cal)
    row["convert_exit"] = code
    entries = json.loads(out)["artifacts"] if out.strip() else []
    x = normalize(make_images(32, size, seed=11)[0], timm_default(size))
    source = prepare(src, fuse=False)
    xm = source.model_input(x)
    want_src = source.run(xm)
    want_timm = timm_forward(net, x, pre_logits=features)
    for e in entries:
        cell = {"error": e["error"]} if "error" in e else {"fused": e["xca_fused"]}
        if "error" not in e:
            spec = all_targets()[e["target"]]
            mod = backend(spec.backend)
            got = mod.run(mod.load(Path(e["path"]) / spec.file, spec), xm)
            cell["rel_err_vs_source"] = float(rel_max_err(got, want_src))
            cell["cosine_min_vs_timm"] = float(agreement(got, want_timm)["cosine_min"])
        row["targets"][e["target"]] = cell
    ok = [arts / t for t in TARGETS if (arts / t / "manifest.json").is_file()]
    code, out = _cli("validate", *ok, "--source", src, "--calibration", cal, "--no-localize", "--json")
    row["validate_exit"] = code
    if out.strip():
        for a in json.loads(out)["artifacts"]:
            row["targets"].setdefault(a["target"], {})["validate"] = "pass" if a["passed"] else "fail"
    row["expected_blocks"] = source.xca.expected
    return row


def _cell(c: dict, target: str, blocks: int) -> str:
    if not c:
        return "—"
    if "error" in c:
        return "FAILED: " + c["error"][:60]
    err = (f"{c['rel_err_vs_source']:.1e}" if target in ("onnx", "openvino")
           else f"cos {c['cosine_min_vs_timm']:.4f}")
    return f"{c['fused']}/{blocks} {err} {c.get('validate', '?')}"


def markdown(rows: list[dict]) -> str:
    head = "| source | inspect | layout | " + " | ".join(TARGETS) + " |"
    lines = [head, "|" + "---|" * (3 + len(TARGETS))]
    for r in rows:
        cells = [_cell(r["targets"].get(t, {}), t, r["expected_blocks"]) for t in TARGETS]
        lines.append(f"| {r['source']} | {r['variant']} | {r['layout']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from xcit_edge.util.tfimport import import_tensorflow_quietly

    import_tensorflow_quietly()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nano", type=Path, help="a folder of nano SavedModels made by scripts/make_foreign.py")
    ap.add_argument("--only", help="comma-separated source names")
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args()
    from xcit_edge.bench import machine_line

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="foreign-bench-") as tmp:
        work = Path(tmp)
        sources = [("keras-fixture", _keras("fixture", False, work), "fixture", False),
                   ("keras-fixture-fe", _keras("fixture", True, work), "fixture", True)]
        sources += [(p.name, p, "fixture", p.name.endswith("-fe")) for p in sorted(FOREIGN.iterdir())]
        if args.nano:
            sources += [("keras-nano", _keras("nano", False, work), "nano", False),
                        ("keras-nano-fe", _keras("nano", True, work), "nano", True)]
            sources += [(f"nano/{p.name}", p, "nano", p.name.endswith("-fe")) for p in sorted(args.nano.iterdir())
                        if (p / "saved_model.pb").is_file()]
        if args.only:
            keep = set(args.only.split(","))
            sources = [s for s in sources if s[0] in keep]
        rows = []
        for name, src, model, features in sources:
            print(f"... {name}", file=sys.stderr, flush=True)
            rows.append(_row(name, src, model, features, work))
            print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("cells: fused/expected blocks, then fp32: rel. max error vs the source SavedModel, others: min cosine vs "
          "timm, then validate's verdict")
    print(markdown(rows))


if __name__ == "__main__":
    main()
