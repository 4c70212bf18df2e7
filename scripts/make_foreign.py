#!/usr/bin/env python
"""Build "foreign" XCiT SavedModels with the real converters people use, each in its own virtual env.

The TF Hub collection `rishit-dagli/xcit` was made the way its author documented for his ConvMixer
models: timm -> `torch.onnx.export` of a wrapper whose forward is `model(torch.transpose(x, 1, 3))`
(input `input`, NHWC *with H and W swapped*, dynamic batch, output `output`) -> onnx-tf
(`onnx-tf convert`). onnx2tf is the other converter users reach for. This script reproduces each
recipe from a timm model (the trained fixture, or a seeded timm nano):

    tool        venv (created on first use, pinned)                         ONNX it reads
    onnx-tf     Python 3.11, onnx-tf 1.10.0, tensorflow-cpu 2.15.1,          opset 10 (onnx-tf has no Squeeze/
                tensorflow-addons 0.23.0, tensorflow-probability 0.23.0,     Unsqueeze-13 handlers), dynamic
                onnx 1.14.1                                                  batch, TIMM_FUSED_ATTN=0
    onnx2tf-1   this venv (requirements-foreign.txt: onnx2tf 1.29.24)        opset 17, batch 1, ORT-folded; -osd
    onnx2tf-2   Python >= 3.12, onnx2tf[tensorflow] 2.6.9                    opset 17, batch 1, ORT-folded;
                                                                             -tb tf_converter -osd

Layouts: `nhwc-wrapper` (the ConvMixer wrapper above) or `nchw` (timm's own input). onnx2tf always
writes NHWC, whatever the ONNX input (so it takes `nchw` ONNX).

    .venv/bin/python scripts/make_foreign.py --model fixture --tool onnx-tf --layout nhwc-wrapper --out DIR
    .venv/bin/python scripts/make_foreign.py --fixtures      # rebuild tests/fixtures/foreign/ (all of them)

Needs the test extra (torch, timm) in the running interpreter. Venvs go to $XCIT_EDGE_FOREIGN_VENVS
(default ~/.cache/xcit-edge/foreign-venvs); pip must reach a package index.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.timm_ref, the tests' reference

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "foreign"
FOREIGN_SIZE = 96  # the fixture at 96 px: at 64 px its 64 tokens equal its 64 channels (onnx2tf mislays it)

VENVS = {
    "onnx-tf": {
        "python": ["python3.11", str(Path.home() / ".pyenv/versions/3.11.7/bin/python")],
        "packages": ["onnx-tf==1.10.0", "tensorflow-cpu==2.15.1", "tensorflow-addons==0.23.0",
                     "tensorflow-probability==0.23.0", "onnx==1.14.1"],
    },
    "onnx2tf-2": {
        "python": ["python3.12", str(Path.home() / ".pyenv/versions/3.12.1/bin/python"), "python3.13"],
        "packages": ["onnx2tf[tensorflow]==2.6.9"],
    },
}
# The tool versions each recipe records (what the SavedModel's provenance file says).
VERSIONS = {"onnx-tf": "onnx-tf 1.10.0 (tensorflow-cpu 2.15.1, onnx 1.14.1)",
            "onnx2tf-1": "onnx2tf 1.29.24 (tensorflow 2.21)", "onnx2tf-2": "onnx2tf 2.6.9 (tensorflow 2.21)"}


def _runnable(python: str) -> str | None:
    """`python`'s path if it starts (a pyenv shim of a version not selected is on PATH but exits 127)."""
    path = shutil.which(python) or (python if Path(python).is_file() else None)
    if path and subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
        return path
    return None


def venv_python(tool: str) -> str:
    """The interpreter of `tool`'s virtual env, created and installed on first use."""
    if tool == "onnx2tf-1":
        return sys.executable
    spec = VENVS[tool]
    root = Path(os.environ.get("XCIT_EDGE_FOREIGN_VENVS", Path.home() / ".cache/xcit-edge/foreign-venvs")) / tool
    py = root / "bin" / "python"
    stamp = root / "installed.json"
    if py.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == spec["packages"]:
        return str(py)
    base = next((p for p in map(_runnable, spec["python"]) if p), None)
    if base is None:
        sys.exit(f"error: {tool} needs one of {', '.join(spec['python'])}")
    print(f"creating {root} with {base} ({' '.join(spec['packages'])})", file=sys.stderr)
    subprocess.run([base, "-m", "venv", "--clear", str(root)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *spec["packages"]], check=True)
    stamp.write_text(json.dumps(spec["packages"]))
    return str(py)


def timm_model(model: str, features: bool):
    """The trained fixture (tests/fixtures) or a seeded timm nano, as a timm module in eval mode."""
    import torch
    from safetensors.torch import load_file
    from timm.models.xcit import Xcit

    sys.path.insert(0, str(ROOT))
    from support.timm_ref import seeded_timm_model

    from xcit_edge.model.zoo import FIXTURE

    if model == "nano":
        net = seeded_timm_model("xcit_nano_12_p16_224", seed=5)
        if features:  # the same network less its head (num_classes=0 at creation would draw other weights)
            net.reset_classifier(0)
        return net, 224
    c = FIXTURE
    net = Xcit(img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
               num_heads=c.num_heads, num_classes=0 if features else c.num_classes, eta=c.eta,
               tokens_norm=c.tokens_norm)
    state = load_file(ROOT / "tests" / "fixtures" / f"{c.name}.safetensors")
    if features:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    net.load_state_dict(state)
    torch.manual_seed(0)
    return net.eval(), FOREIGN_SIZE


class TransposeWrapper:
    """The ConvMixer recipe's wrapper: `model(torch.transpose(x, 1, 3))` (NHWC in, H and W swapped)."""

    def __new__(cls, inner):
        import torch

        class _Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.main_module = inner

            def forward(self, x):
                return self.main_module(torch.transpose(x, 1, 3))

        return _Wrapper().eval()


def export_onnx(net, size: int, tool: str, layout: str, path: Path) -> None:
    """torch.onnx.export as each recipe does it (TorchScript exporter, attention as written)."""
    import torch

    wrapped = TransposeWrapper(net) if layout == "nhwc-wrapper" else net
    x = torch.zeros(1, size, size, 3) if layout == "nhwc-wrapper" else torch.zeros(1, 3, size, size)
    dynamic = {"input": {0: "batch_size"}, "output": {0: "batch_size"}} if tool == "onnx-tf" else None
    torch.onnx.export(wrapped, x, str(path), opset_version=10 if tool == "onnx-tf" else 17,
                      input_names=["input"], output_names=["output"], dynamic_axes=dynamic, dynamo=False)


def _fold(path: Path, out: Path) -> None:
    """ONNX Runtime's basic optimizations fold the Fourier encoding (onnx2tf 1.29 and 2.6.9 fail on its Expand:
    "Output tensors of a Functional model must be the output of a TensorFlow `Layer`")."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def convert(tool: str, onnx_path: Path, out: Path, work: Path) -> None:
    """Run the converter in its own env; `out` gets the SavedModel."""
    py = venv_python(tool)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)
    if tool == "onnx-tf":
        cmd = [str(Path(py).parent / "onnx-tf"), "convert", "-i", str(onnx_path), "-o", str(out)]
    else:
        # onnx2tf reads a calibration sample from its working directory or downloads it: give it one.
        import numpy as np

        sample = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
        np.save(work / "calibration_image_sample_data_20x128x128x3_float32.npy", sample)
        folded = work / "folded.onnx"
        _fold(onnx_path, folded)
        if tool == "onnx2tf-1":
            cmd = [py, "-m", "onnx2tf.onnx2tf", "-i", str(folded), "-o", str(work / "o2t"), "-osd", "-n"]
        else:
            cmd = [py, "-m", "onnx2tf", "-i", str(folded), "-o", str(work / "o2t"), "-tb", "tf_converter",
                   "-osd", "-n"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    produced = out if tool == "onnx-tf" else work / "o2t"
    if not (produced / "saved_model.pb").is_file():
        sys.exit(f"error: {tool} wrote no SavedModel:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if produced != out:
        shutil.copytree(produced, out, ignore=shutil.ignore_patterns("*.tflite", "*.h5", "*.json"))


_RUN_IN_VENV = """
import sys, numpy as np, tensorflow as tf
f = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
(key, spec), = f.structured_input_signature[1].items()
x = np.load(sys.argv[2])
if spec.shape[-1] == 3 and x.shape[-1] != 3:
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # onnx2tf made the NCHW input NHWC
outs = [f(**{key: tf.constant(x[i:i + 1])}) for i in range(len(x))]
np.save(sys.argv[3], np.concatenate([next(iter(o.values())).numpy() for o in outs]))
"""


def check_against_timm(net, size: int, tool: str, layout: str, saved_model: Path, work: Path) -> float:
    """Relative max error of the SavedModel, run in its converter's own TensorFlow, against timm."""
    import numpy as np
    import torch

    from xcit_edge.metrics import rel_max_err

    shape = (4, size, size, 3) if layout == "nhwc-wrapper" else (4, 3, size, size)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        t = torch.from_numpy(x)
        want = net(torch.transpose(t, 1, 3) if layout == "nhwc-wrapper" else t).numpy()
    np.save(work / "x.npy", x)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)
    subprocess.run([venv_python(tool), "-c", _RUN_IN_VENV, str(saved_model), str(work / "x.npy"),
                    str(work / "y.npy")], check=True, env=env, capture_output=True, timeout=900)
    return rel_max_err(np.load(work / "y.npy"), want)


def make(model: str, tool: str, layout: str, features: bool, out: Path) -> Path:
    """One foreign SavedModel at `out` (replaced), with `foreign.json` saying how it was made."""
    if tool.startswith("onnx2tf") and layout != "nchw":
        sys.exit("error: onnx2tf takes timm's NCHW ONNX (it writes NHWC itself): use --layout nchw")
    os.environ["TIMM_FUSED_ATTN"] = "0"  # attention as written (the recipes predate F.sdpa)
    net, size = timm_model(model, features)
    with tempfile.TemporaryDirectory(prefix="foreign-") as tmp:
        work = Path(tmp)
        onnx_path = work / "model.onnx"
        export_onnx(net, size, tool, layout, onnx_path)
        staged = work / "saved_model"
        convert(tool, onnx_path, staged, work)
        err = check_against_timm(net, size, tool, layout, staged, work)
        if err > 1e-4:
            sys.exit(f"error: the {tool} SavedModel does not reproduce timm in its own TensorFlow "
                     f"(rel. max error {err:.2g})")
        (staged / "foreign.json").write_text(json.dumps({
            "model": model, "tool": VERSIONS[tool], "timm_rel_max_err": float(f"{err:.3g}"),
 "layout": layout, "features": features, "img_size": size,
            "command": f"scripts/make_foreign.py --model {model} --tool {tool} --layout {layout}"
                       + (" --features" if features else ""),
        }, indent=1) + "\n")
        for d in staged.iterdir():  # git keeps no empty folder: commit what a clone will have
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), out)
    print(out)
    return out


RECIPES = [("onnx-tf", "nhwc-wrapper"), ("onnx-tf", "nchw"), ("onnx2tf-1", "nchw"), ("onnx2tf-2", "nchw")]


def fixture_name(tool: str, layout: str, features: bool) -> str:
    return f"{tool}-{layout}" + ("-fe" if features else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["fixture", "nano"], default="fixture")
    ap.add_argument("--tool", choices=["onnx-tf", "onnx2tf-1", "onnx2tf-2"])
    ap.add_argument("--layout", choices=["nhwc-wrapper", "nchw"], default="nchw")
    ap.add_argument("--features", action="store_true", help="feature extractor (num_classes=0)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--fixtures", action="store_true", help=f"rebuild every fixture-based model in {FIXTURE_DIR}")
    args = ap.parse_args()
    if args.fixtures:
        for tool, layout in RECIPES:
            for features in (False, True):
                make("fixture", tool, layout, features, FIXTURE_DIR / fixture_name(tool, layout, features))
        return
    if not args.tool or not args.out:
        ap.error("--tool and --out are required (or --fixtures)")
    make(args.model, args.tool, args.layout, args.features, args.out)


if __name__ == "__main__":
    main()
