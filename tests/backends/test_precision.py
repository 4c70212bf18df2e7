"""`convert --max-drop`: int8 targets keep layers in float until the measured top-1 drop holds, and the
manifest says what was kept and what was measured (the real greedy on the stress fixture: test_int8.py)."""

from types import SimpleNamespace

import numpy as np
import pytest

from xcit_edge.backends import Conversion, backend
from xcit_edge.data.calibration import normalize
from xcit_edge.data.preprocessing import timm_default
from xcit_edge.errors import ConversionError
from xcit_edge.model.zoo import FIXTURE
from xcit_edge.precision import DropCheck, convert_within_drop, groups
from xcit_edge.targets import all_targets

PRE = timm_default(FIXTURE.img_size)


def test_groups_are_contiguous_and_cover_every_layer():
    layers = [f"l{i}" for i in range(10)]
    assert groups(layers, 4) == [["l0", "l1"], ["l2", "l3", "l4"], ["l5", "l6", "l7"], ["l8", "l9"]]
    assert groups(layers[:2], 6) == [["l0"], ["l1"]] and groups([], 3) == []


class _Backend(SimpleNamespace):
    """A backend whose artifact's top-1 is wrong for `wrong(kept)` of 100 images, kept = layers in float."""

    convert_within_drop = None  # no accuracy control of its own: precision.py relaxes quantized_layers

    def convert(self, graph, spec, calib, workdir):
        self.kept = frozenset(spec.quantization.get("keep_nodes", []))
        return Conversion(["m"])

    def load(self, path, spec):
        return None

    def run(self, session, x):
        out = np.eye(10)[np.arange(len(x)) % 10]
        out[: self.wrong(self.kept)] = np.roll(out[: self.wrong(self.kept)], 1, axis=1)
        return out

    def quantized_layers(self, graph, spec):
        return [f"layer{i}" for i in range(8)]


def _check():
    x = np.zeros((100, 1))
    ref = np.eye(10)[np.arange(100) % 10]
    return DropCheck(x, ref, None)


GRAPH = SimpleNamespace(xca=SimpleNamespace(fused=2))  # 2 XCA blocks + 2 class-attention blocks: 4 groups of 2 layers


def test_greedy_keeps_the_groups_that_help_most_until_the_drop_holds(tmp_path):
    """Group 2 (layer4, layer5) costs 6 points, group 0 costs 2, the others nothing: probing measures that,
    and the first cumulative step already keeps the worst group; the second adds the next."""
    cost = {"layer4": 6, "layer0": 2}

    def wrong(kept):
        return sum(v for k, v in cost.items() if k not in kept)

    mod = _Backend(wrong=wrong)
    _, final, rec = convert_within_drop(mod, all_targets()["tflite-int8"], GRAPH, np.zeros((100, 1)), tmp_path, 1.0,
                                        _check())
    probes = [s["drop"] for s in rec.steps if "probe_group" in s]
    assert probes == [6.0, 8.0, 2.0, 8.0]  # each group in float alone
    assert final.quantization["keep_nodes"] == ["layer4", "layer5", "layer0", "layer1"] and rec.held
    assert rec.measured_drop == 0.0 and rec.method == "greedy over layer groups by measured drop"
    assert "disagreement" in rec.basis


def test_fails_when_nothing_is_left_to_relax(tmp_path):
    mod = _Backend(wrong=lambda kept: 7)
    want = r"is 7.00 points, above --max-drop 1, with nothing left to relax \(best 7.00 points, 0 layers"
    with pytest.raises(ConversionError, match=want):
        convert_within_drop(mod, all_targets()["onnx-int8"], GRAPH, np.zeros((100, 1)), tmp_path, 1.0, _check())


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
