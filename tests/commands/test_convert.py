"""`xcit-edge convert`: every target from native and foreign XCiT SavedModels, each artifact run in
its own runtime and held to its target spec against timm (the independent reference)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_WEIGHTS, PROGRESS_LINE, images, one_line_error, rel_max_err, run, timm_forward

from xcit_edge.backends import backend
from xcit_edge.data.calibration import normalize
from xcit_edge.data.preprocessing import timm_default
from xcit_edge.data.synthetic import CLASSES
from xcit_edge.metrics import agreement
from xcit_edge.model.build import build
from xcit_edge.model.zoo import FIXTURE
from xcit_edge.targets import all_targets
from xcit_edge.util.fs import sha256_file

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

PRE = timm_default(FIXTURE.img_size)


def run_artifact(entry: dict, x: np.ndarray) -> np.ndarray:
    spec = all_targets()[entry["target"]]
    mod = backend(spec.backend)
    return mod.run(mod.load(Path(entry["path"]) / spec.file, spec), x)


def test_fixture_is_trained_and_our_savedmodel_is_timm(timm_fixture, fixture_dir, held_out):
    from xcit_edge.graph import prepare

    pixels, labels = held_out
    x = normalize(pixels, PRE)
    ref = timm_forward(timm_fixture, x)
    assert (ref.argmax(1) == labels).mean() >= 0.9  # chance is 0.1
    ours = prepare(fixture_dir).run(x)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_fixture_every_target_keeps_its_promise(fixture_artifacts, timm_fixture, held_out):
    pixels, labels = held_out
    x = normalize(pixels, PRE)
    ref = timm_forward(timm_fixture, x)
    assert set(fixture_artifacts) == set(all_targets())
    for name, entry in fixture_artifacts.items():
        tol = all_targets()[name].tolerances
        m = agreement(run_artifact(entry, x), ref, labels)
        assert m["cosine_mean"] >= tol["min_cosine"], (name, m)
        assert m["top1_agreement"] >= tol["min_top1_agreement"], (name, m)
        assert m["top1_drop"] <= tol["max_top1_drop"], (name, m)
        if not all_targets()[name].quantized:
            assert m["cosine_mean"] >= 0.999, (name, m)


def test_manifest_describes_the_artifact(fixture_artifacts, fixture_dir):
    from xcit_edge.artifact.manifest import Manifest, read_manifest
    from xcit_edge.util.fs import sha256_tree

    for name, entry in fixture_artifacts.items():
        man = read_manifest(Path(entry["path"]))
        assert man.target_name == name
        assert man.source.sha256 == sha256_tree(fixture_dir)
        assert man.source.arch == FIXTURE.name
        for f in man.files:
            path = Path(entry["path"]) / f.file
            assert sha256_file(path) == f.sha256 and path.stat().st_size == f.bytes
        assert (Path(entry["path"]) / "labels.txt").read_text().split() == list(CLASSES)
        assert man.io.input.shape[1:] == (64, 64, 3) and man.labels.count == len(CLASSES)
        assert {"tensorflow", "onnx", "openvino"} <= set(man.libraries) | {"tensorflow"}
        assert (man.xca.expected, man.xca.fused, man.xca.in_artifact) == (4, 4, 4), man.xca
        doc = json.loads((Path(entry["path"]) / "manifest.json").read_text())
        assert json.loads(json.dumps(man.to_dict())) == doc  # the record is the whole file
        assert Manifest.from_dict(doc, name) == man
    int8 = read_manifest(Path(fixture_artifacts["tflite-int8"]["path"]))
    assert any(k.startswith("DIV") for k in int8.kept_float) and int8.calibration.images == 200
    # read back: the products are int8 but for the head (64 x 10 = 640 weights, under min_weight_elements 1024)
    assert [k for k in int8.kept_float if k.startswith("FULLY_CONNECTED")] == ["FULLY_CONNECTED x1"], int8


def test_onnx_shows_one_xca_function_node_per_block(fixture_artifacts):
    import onnx

    model = onnx.load(str(Path(fixture_artifacts["onnx"]["path"]) / "model.onnx"))
    calls = [n for n in model.graph.node if n.op_type == "XCA"]
    assert len(calls) == 4 and {n.domain for n in calls} == {"xcit_edge"}
    assert [(f.domain, f.name) for f in model.functions] == [("xcit_edge", "XCA")]
    assert any(o.domain == "xcit_edge" for o in model.opset_import)
    # every LayerNorm (4 blocks x 3, 2 class-attention blocks x 2, the final one) is one node
    assert sum(n.op_type == "LayerNormalization" for n in model.graph.node) == 17


def test_inline_functions_gives_a_model_openvino_reads(fixture_artifacts, fixture_dir, held_out, tmp_path):
    import onnx
    import openvino as ov

    from xcit_edge.backends.onnx.functions import count_xca

    res = run("--quiet", "convert", fixture_dir, "--target", "onnx", "--inline-functions", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    path = tmp_path / "o" / "onnx" / "model.onnx"
    model = onnx.load(str(path))
    assert not model.functions and count_xca(model) == 4
    x = normalize(held_out[0][:4], PRE)
    compiled = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x)[compiled.outputs[0]]
    want = run_artifact(fixture_artifacts["onnx"], x)  # the function form, in ONNX Runtime
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


def test_onnx_is_valid_opset_17(fixture_artifacts):
    import onnx

    model = onnx.load(str(Path(fixture_artifacts["onnx"]["path"]) / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]


def test_tflite_uses_builtins_only(fixture_artifacts):
    from xcit_edge.backends.tflite import op_types

    for name in ("tflite-fp16", "tflite-int8"):
        ops = op_types(Path(fixture_artifacts[name]["path"]) / "model.tflite")
        assert "GELU" in ops and not any(o.startswith("Flex") or o == "CUSTOM" for o in ops), ops


def test_bake_preprocessing_takes_uint8_pixels(fixture_dir, timm_fixture, held_out, tmp_path):
    res = run("--quiet", "convert", fixture_dir, "--target", "onnx,tflite-fp16", "--out", tmp_path / "o",
              "--bake-preprocessing", "--json")
    assert res.exit_code == 0, res.output
    pixels, _ = held_out
    ref = timm_forward(timm_fixture, normalize(pixels[:32], PRE))
    for entry in json.loads(res.stdout)["artifacts"]:
        man = json.loads(Path(entry["manifest"]).read_text())
        assert man["io"]["input"]["dtype"] == "uint8" and man["preprocessing"]["baked_into_model"]
        assert agreement(run_artifact(entry, pixels[:32]), ref)["cosine_min"] >= 0.999


def test_mediapipe_image_classifier_runs_the_baked_tflite_artifacts(fixture_dir, calib_npz, timm_fixture,
                                                                     held_out, tmp_path):
    """MediaPipe Tasks (the Android/iOS core) refuses per-channel normalization metadata
    ("Per-channel image normalization is not available": measured), so the mobile artifacts are
    the --bake-preprocessing ones: uint8 RGB in, ImageNet normalization inside."""
    pytest.importorskip("mediapipe")
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    res = run("--quiet", "convert", fixture_dir, "--target", "tflite-fp16,tflite-int8", "--bake-preprocessing",
              "--calibration", calib_npz, "--out", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    pixels, _ = held_out
    expected = timm_forward(timm_fixture, normalize(pixels[:20], PRE)).argmax(1)
    for entry in json.loads(res.stdout)["artifacts"]:
        opts = vision.ImageClassifierOptions(
            base_options=BaseOptions(model_asset_path=str(Path(entry["path"]) / "model.tflite")), max_results=1)
        with vision.ImageClassifier.create_from_options(opts) as clf:
            names = [clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(p)))
                     .classifications[0].categories[0].category_name for p in pixels[:20]]
        agree = np.mean([n == CLASSES[e] for n, e in zip(names, expected, strict=True)])
        assert agree >= 0.9, (entry["target"], names)


def _check_all_targets(model_dir, timm_model, tmp_path, size: int = 224, depth: int = 12):
    """The four mobile/edge targets against timm, and XCA as written (`prepare(fuse=False)`) converted
    to the three float targets must equal the fused artifacts within 1e-5 (the fusion is exact in every
    runtime). int8 accuracy (and onnx-int8, openvino-int8) is the fixture's test, so 8 calibration
    images keep the nano runs short."""
    from xcit_edge.graph import prepare

    res = run("--quiet", "convert", model_dir, "--target", "tflite-int8,tflite-fp16,onnx,openvino",
              "--out", tmp_path / "out", "--json", "--calibration-images", 8)
    assert res.exit_code == 0, res.output
    x = images(4, size, seed=7)
    ref = timm_forward(timm_model, x)
    as_written = prepare(model_dir, fuse=False)
    assert as_written.xca.fused == 0
    got, fusion_err = {}, {}
    for entry in json.loads(res.stdout)["artifacts"]:
        assert entry["xca_fused"] == depth, entry  # every block, in every artifact
        xm = as_written.model_input(x)
        out = run_artifact(entry, xm)
        assert out.shape == ref.shape and np.isfinite(out).all()
        got[entry["target"]] = agreement(out, ref)["cosine_min"]
        spec = all_targets()[entry["target"]]
        if not spec.quantized:
            d = tmp_path / "as-written" / spec.name
            d.mkdir(parents=True)
            mod = backend(spec.backend)
            conv = mod.convert(as_written, spec, None, d)
            assert conv.details["xca_blocks"] == 0, spec.name
            fusion_err[spec.name] = rel_max_err(out, mod.run(mod.load(d / spec.file, spec), xm))
    assert got["onnx"] >= 0.9999 and got["openvino"] >= 0.9999 and got["tflite-fp16"] >= 0.999, got
    assert len(fusion_err) == 3 and max(fusion_err.values()) <= 1e-5, fusion_err
    return got


def test_native_nano_converts_to_every_target(nano, tmp_path):
    model, weights = nano
    sm = tmp_path / "nano"
    build("xcit_nano_12_p16_224", sm, weights=weights)
    _check_all_targets(sm, model, tmp_path)


# --- bad input: one line, exit 2, nothing left behind ---------------------------------------------


def test_missing_model(tmp_path):
    line = one_line_error(run("convert", tmp_path / "nope", "--out", tmp_path / "o"))
    assert "nope" in line
    assert not (tmp_path / "o").exists()


def test_corrupt_savedmodel(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"\x08\x01garbage" * 100)
    assert "corrupt" in one_line_error(run("convert", bad, "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_non_xcit_savedmodel(tmp_path):
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.stateless_normal([3, 3, 3, 8], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 64, 64, 3], tf.float32)])
        def serve(self, x):
            return {"output": tf.reduce_mean(tf.nn.conv2d(x, self.w, 1, "SAME"), [1, 2])}

    m = Tiny()
    tf.saved_model.save(m, str(tmp_path / "tiny"), signatures={"serving_default": m.serve})
    assert "not a recognised XCiT" in one_line_error(run("convert", tmp_path / "tiny", "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_unknown_target(fixture_dir, tmp_path):
    assert "unknown target 'tflite-int3'" in one_line_error(
        run("convert", fixture_dir, "--target", "tflite-int3", "--out", tmp_path / "o"))


def test_calibration_without_usable_images(fixture_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in one_line_error(
        run("convert", fixture_dir, "--target", "tflite-int8", "--out", tmp_path / "o", "--calibration", empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    (broken / "b.png").write_bytes(b"")
    assert "no usable images" in one_line_error(
        run("convert", fixture_dir, "--target", "tflite-int8", "--out", tmp_path / "o", "--calibration", broken))
    assert not (tmp_path / "o").exists()


def test_out_exists_without_force(fixture_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "--force" in one_line_error(run("convert", fixture_dir, "--target", "onnx", "--out", out))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_disk_full_leaves_no_partial_artifact(fixture_dir, tiny_disk):
    line = one_line_error(run("convert", fixture_dir, "--target", "onnx", "--out", tiny_disk / "o"))
    assert "space" in line.lower()
    assert list(tiny_disk.iterdir()) == []


def test_nchw_tf_module_with_other_output_key(timm_fixture, held_out, calib_npz, tmp_path):
    """A hand-written tf.Module wrapper: channels-first input, output key `logits` (the real converters'
    outputs are tests/source/test_foreign.py's)."""
    import tensorflow as tf

    from xcit_edge.model.build import build_keras

    model, _ = build_keras(FIXTURE.name, FIXTURE_WEIGHTS)

    class Nchw(tf.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        @tf.function(input_signature=[tf.TensorSpec([None, 3, 64, 64], tf.float32, name="pixels")])
        def serve(self, pixels):
            return {"logits": self.inner(tf.transpose(pixels, [0, 2, 3, 1]))}

    wrapper = Nchw(model)
    tf.saved_model.save(wrapper, str(tmp_path / "nchw"), signatures={"serving_default": wrapper.serve})
    res = run("--quiet", "convert", tmp_path / "nchw", "--target", "onnx,openvino,tflite-fp16,tflite-int8",
              "--calibration", calib_npz, "--out", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    pixels, labels = held_out
    x = normalize(pixels[:64], PRE)
    ref = timm_forward(timm_fixture, x)
    for entry in json.loads(res.stdout)["artifacts"]:
        man = json.loads(Path(entry["manifest"]).read_text())
        assert man["io"]["input"]["layout"] == "NCHW" and man["source"]["output_key"] == "logits"
        out = run_artifact(entry, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        m = agreement(out, ref, labels[:64])
        assert m["top1_drop"] <= all_targets()[entry["target"]].tolerances["max_top1_drop"], (entry["target"], m)
        if entry["target"] != "tflite-int8":
            assert m["cosine_min"] >= 0.999, (entry["target"], m)


def test_force_replaces_only_the_converted_targets(fixture_dir, tmp_path):
    out = tmp_path / "o"
    assert run("--quiet", "convert", fixture_dir, "--target", "onnx", "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    first = (out / "onnx" / "manifest.json").read_text()
    assert run("--quiet", "convert", fixture_dir, "--target", "onnx", "--out", out, "--force").exit_code == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "onnx" / "manifest.json").read_text())["created"] >= json.loads(first)["created"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "onnx"]  # no temp leftovers


def test_a_failing_target_does_not_stop_the_others(fixture_dir, tmp_path, monkeypatch):
    from xcit_edge.backends import onnx as onnx_backend
    from xcit_edge.errors import ConversionError

    def refuse(*args, **kwargs):
        raise ConversionError("tf2onnx produced an invalid ONNX model: simulated")

    monkeypatch.setattr(onnx_backend, "convert", refuse)
    res = run("--quiet", "convert", fixture_dir, "--target", "onnx,tflite-fp16", "--out", tmp_path / "o", "--json")
    assert res.exit_code == 1, res.output
    by_target = {a["target"]: a for a in json.loads(res.stdout)["artifacts"]}
    assert "simulated" in by_target["onnx"]["error"] and not (tmp_path / "o" / "onnx").exists()
    assert (tmp_path / "o" / "tflite-fp16" / "manifest.json").is_file()


def test_nncf_writes_nothing_on_stdout(capfd):
    """`--json` owns stdout. NNCF logs INFO lines ("2 ignored nodes were found by types", since
    openvino-int8 keeps ScaledDotProductAttention float) through a StreamHandler on the sys.stdout it
    found when imported; that handler is installed here the same way, on the stdout being captured."""
    import logging
    import sys

    import nncf  # noqa: F401 - its own handler too

    from xcit_edge.backends.openvino import nncf_off_stdout

    logger = logging.getLogger("nncf")
    handler = logging.StreamHandler(sys.stdout)
    logger.addHandler(handler)
    try:
        with nncf_off_stdout():
            logger.info("2 ignored nodes were found by types in the NNCFGraph")
            logger.warning("NNCF warnings too")
            print("a progress bar")
        captured = capfd.readouterr()
        restored = handler in logger.handlers and logger.propagate is False  # NNCF's own setup is back
    finally:
        logger.removeHandler(handler)
    assert captured.out == ""
    assert restored


_NO_TF = """
import sys
from click.testing import CliRunner
from xcit_edge.cli import main
r = CliRunner().invoke(main, sys.argv[1:])
print(r.exit_code, "tensorflow" in sys.modules, r.stderr.strip().splitlines()[-1])
"""


@pytest.mark.parametrize("args, expected", [
    (["convert", "xcit_nano_12_p16_224", "--target", "onnxx", "--out", "o"], "(did you mean 'onnx'?)"),
    (["convert", "./no/such/dir", "--out", "o"], "MODEL ./no/such/dir does not exist"),
    (["build", "xcit_nanno_12_p16_224", "--out", "o"], "(did you mean 'xcit_nano_12_p16_224'?)"),
    (["reference", "xcit_nano_12_p16_22", "--calibration", "sample", "--out", "r.npz"], "unknown architecture"),
    (["validate", "no-such-artifact", "--calibration", "sample"], "artifact not found: no-such-artifact"),
    (["inspect", "owner/typo"], "MODEL owner/typo does not exist"),
])
def test_bad_arguments_are_refused_before_tensorflow_loads(args, expected, tmp_path):
    """A typo costs no TensorFlow start-up (10-20 s): arguments are checked first, in a fresh process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _NO_TF, *args], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    code, tf_loaded, line = out.stdout.strip().split(" ", 2)
    assert (code, tf_loaded) == ("2", "False"), out.stdout + out.stderr
    assert line.startswith("error: ") and expected in line, line


def test_convert_help_lists_every_target():
    text = run("convert", "--help").output
    assert all(f"  {name} " in text for name in all_targets()), text


def test_progress_off_a_terminal_is_one_line_per_step(capsys):
    """CI logs and `2>log` get a line per step (validate was minutes of silence), not one per image."""
    from xcit_edge.cli.convert import _convert_stage
    from xcit_edge.cli.progress import Bars as _Bars

    bars = _Bars(quiet=False, describe=_convert_stage(["onnx", "onnx-int8"]), tty=False)
    with bars.bar:
        for done in range(6):
            bars("prepare", done, 5)
        for i in range(50):
            bars("calibration", i + 1, 50)
        bars("targets", 0, 2)
        bars("targets", 1, 2)
        for i in range(20):
            bars("quantize", i + 1, 20)
        bars("targets", 2, 2)
    lines = capsys.readouterr().err.splitlines()
    steps = [line.split("] ", 1)[1] for line in lines]
    quantizing = [s for s in steps if s.startswith("quantizing onnx-int8: calibration images, about ")]
    assert steps[:5] == ["preparing the graph: loading the SavedModel (0/5)", "preparing the graph: freezing (1/5)",
                         "preparing the graph: canonical rewrites (2/5)", "preparing the graph: fusing XCA (3/5)",
                         "preparing the graph: adapting the input (4/5)"], lines
    assert [s for s in steps if not s.startswith(("preparing", "quantizing"))] == [
        "graph prepared (5/5)", "calibration images (1/50)", "calibration images (50/50)", "converting onnx (0/2)",
        "converting onnx-int8 (1/2)", "targets done (2/2)"], lines
    assert [q.rsplit(" (", 1)[1] for q in quantizing] == [f"{n}/20)" for n in range(2, 21, 2)], lines
    assert all(PROGRESS_LINE.match(line) for line in lines), lines
    assert _Bars(quiet=True, tty=False).lines is False


def test_convert_summary_columns_line_up(capsys):
    from types import SimpleNamespace

    from xcit_edge.cli.convert import _print_convert_summary
    from xcit_edge.convert import ArtifactResult
    from xcit_edge.records import CheckRecord, XcaRecord

    def result(target: str, path: str, blocks: int, mb: float) -> ArtifactResult:
        check = CheckRecord(16, (), {"cosine_mean": 0.99991, "top1_agreement": 1.0})
        xca = XcaRecord(enabled=True, expected=blocks, fused=blocks, in_artifact=blocks)
        manifest = SimpleNamespace(check=check, xca=xca, max_drop=None, file_bytes=int(mb * 1e6))
        return ArtifactResult(target, Path(path), manifest)

    _print_convert_summary([result("onnx", "o/onnx", 4, 1.5),
                            result("tflite-16x8-full", "o/tflite-16x8-full", 12, 12.25),
                            ArtifactResult("openvino", Path("o/openvino"), None, error="openvino: conversion failed")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2].startswith("openvino          ") and lines[2].endswith("conversion failed")
    for column in ("MB", "XCA fused", "cosine", "top-1 agreement", "ok"):
        assert len({line.index(column) for line in lines[:2]}) == 1, (column, lines)


def test_the_library_reports_each_step_of_a_target(fixture_dir, calib_npz, tmp_path):
    """A large model's target is minutes of work: `convert` names the step it is in (the converter, the
    rewrites, the checks) and the source run before the targets, through the same progress callback."""
    from xcit_edge.convert import ConvertOptions, convert
    from xcit_edge.targets import parse_targets

    seen = []
    convert(fixture_dir, parse_targets("onnx,tflite-fp16"), tmp_path / "out",
            ConvertOptions(calibration=str(calib_npz)),
            progress=lambda stage, done, total, step=None: seen.append((stage, done, step)))
    steps = [(done, step) for stage, done, step in seen if stage == "target" and step]
    assert [s for d, s in steps if d == 0][:3] == ["tf2onnx", "ONNX checker", "ONNX rewrites"], steps
    assert [s for d, s in steps if d == 1] == ["TFLite converter", "running with the runtime's default options",
                                              "checking against the source on 16 images"], steps
    assert ("source", 0, None) in seen and seen.index(("source", 0, None)) < seen.index(("target", 0, None))
