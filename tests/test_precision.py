"""`convert --max-drop`: int8 targets keep layers in float until the measured top-1 drop holds, and the
manifest says what was kept and what was measured (checked here against timm)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run, timm_forward

from xcit_edge.backends import Conversion, backend
from xcit_edge.calibration import normalize
from xcit_edge.errors import ConversionError
from xcit_edge.precision import DropCheck, convert_within_drop, ladder
from xcit_edge.preprocessing import timm_default
from xcit_edge.targets import all_targets
from xcit_edge.zoo import FIXTURE

PRE = timm_default(FIXTURE.img_size)


def test_ladder_doubles_and_ends_with_everything():
    assert ladder(0) == [] and ladder(1) == [1] and ladder(5) == [1, 2, 4, 5] and ladder(8) == [1, 2, 4, 8]


class _Backend(SimpleNamespace):
    """A backend whose artifact's top-1 is right for all but `wrong(k)` of 100 images, k = layers kept."""

    def convert(self, graph, spec, calib, workdir):
        self.k = len(spec.quantization.get("keep_nodes", []))
        return Conversion(["m"])

    def load(self, path, spec):
        return None

    def run(self, session, x):
        out = np.eye(10)[np.arange(len(x)) % 10]
        out[: self.wrong(self.k)] = np.roll(out[: self.wrong(self.k)], 1, axis=1)
        return out

    def rank_nodes(self, graph, spec, calib, workdir):
        return [f"layer{i}" for i in range(6)]


def _check():
    x = np.zeros((100, 1))
    ref = np.eye(10)[np.arange(100) % 10]
    return DropCheck(x, ref, None)


def test_relaxes_until_the_drop_holds_and_records_the_steps(tmp_path):
    spec = all_targets()["tflite-int8"]
    mod = _Backend(wrong=lambda k: {0: 9, 1: 9, 2: 5, 4: 2}.get(k, 0))
    _, final, rec = convert_within_drop(mod, spec, None, np.zeros((100, 1)), tmp_path, 3.0, _check())
    assert [s["kept_nodes"] for s in rec["steps"]] == [0, 1, 2, 4] and rec["measured_drop"] == 2.0
    assert final.quantization["keep_nodes"] == ["layer0", "layer1", "layer2", "layer3"] and rec["held"]
    assert "disagreement" in rec["basis"]


def test_fails_when_nothing_is_left_to_relax(tmp_path):
    mod = _Backend(wrong=lambda k: 7)
    want = r"is 7.00 points, above --max-drop 1, with nothing left to relax \(best 7.00 points: 0 layers"
    with pytest.raises(ConversionError, match=want):
        convert_within_drop(mod, all_targets()["onnx-int8"], None, np.zeros((100, 1)), tmp_path, 1.0, _check())


@pytest.mark.slow  # 35-50 s; openvino-int8's --max-drop (NNCF) stays in the default run
def test_onnx_int8_within_max_drop(fixture_dir, calib_npz, timm_fixture, tmp_path):
    """ONNX Runtime int8 on the fixture drops 2.5 points on its 200 calibration images; --max-drop 2.2
    makes the worst-ranked nodes float until it holds, and the measured drop is timm's."""
    res = run("--quiet", "convert", fixture_dir, "--target", "onnx-int8", "--max-drop", 2.2, "--out", tmp_path / "a",
              "--calibration", calib_npz, "--json")
    assert res.exit_code == 0, res.output
    entry = json.loads(res.stdout)["artifacts"][0]
    md = entry["max_drop"]
    assert md["held"] and md["measured_drop"] <= 2.2 and "accuracy drop on 200" in md["basis"]
    # tf2onnx's node order (hence ORT's quantization) varies between processes, so the first drop is
    # 2.5 in every run seen so far but not guaranteed: relaxation is asserted when it was needed
    if md["steps"][0]["drop"] > 2.2:
        assert md["kept_nodes"] and md["method"] == "rank_nodes + deny-list", md
    man = json.loads(Path(entry["manifest"]).read_text())
    assert man["target"]["quantization"]["keep_nodes"] == md["kept_nodes"]
    data = np.load(calib_npz)
    x, labels = normalize(data["images"], PRE), data["labels"]
    spec = all_targets()["onnx-int8"]
    mod = backend("onnx")
    out = mod.run(mod.load(Path(entry["path"]) / spec.file, spec), x)
    ref = timm_forward(timm_fixture, x)
    drop = 100 * ((ref.argmax(1) == labels).mean() - (out.argmax(1) == labels).mean())
    assert drop == pytest.approx(md["measured_drop"], abs=0.51)  # timm vs the SavedModel: one image at most


def test_openvino_int8_uses_nncf_accuracy_control(fixture_dir, held_out, tmp_path):
    from xcit_edge.graph import prepare

    graph = prepare(fixture_dir)
    x = normalize(held_out[0][:64], PRE)
    targets = graph.run(x).argmax(-1)
    spec = all_targets()["openvino-int8"]
    mod = backend("openvino")
    conv = mod.convert_within_drop(graph, spec, x, targets, 0.0, tmp_path)
    assert conv.details["xca_blocks"] == FIXTURE.depth and "FakeQuantize" in conv.details["ops"]
    out = mod.run(mod.load(tmp_path / spec.file, spec), x)
    assert (out.argmax(-1) == targets).mean() == 1.0  # max drop 0: every top-1 of the float model kept


@pytest.mark.slow
def test_tflite_int8_within_max_drop(fixture_dir, calib_npz, tmp_path):
    """TFLite int8: 5.5 points on the calibration images; the debugger-ranked deny-list reaches 2.5
    only with most ranked layers in float (10 conversions, about 80 s)."""
    res = run("--quiet", "convert", fixture_dir, "--target", "tflite-int8", "--max-drop", 2.5, "--out", tmp_path / "a",
              "--calibration", calib_npz, "--json")
    assert res.exit_code == 0, res.output
    md = json.loads(res.stdout)["artifacts"][0]["max_drop"]
    assert md["held"] and md["measured_drop"] <= 2.5 and len(md["steps"]) > 2
