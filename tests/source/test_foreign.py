"""SavedModels the real converters made, as users have them: tests/fixtures/foreign/ (rebuilt by
`scripts/make_foreign.py --fixtures`, each checked there against timm in its converter's own TensorFlow).

From the trained fixture at 96 px, as classifier and feature extractor: onnx-tf 1.10 with the TF Hub
collection's recipe (an NHWC wrapper doing `torch.transpose(x, 1, 3)`: H and W swapped) and with timm's
NCHW input, onnx2tf 1.29 and onnx2tf 2.6.9 (batch 1). Every one must be identified, read in the layout it
really has, and convert with every XCA block fused; the float targets must reproduce the source SavedModel
within 1e-5 (relative max error) and timm, the independent reference.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES_DIR, rel_max_err, run, timm_forward

from xcit_edge.backends import backend
from xcit_edge.data.calibration import normalize
from xcit_edge.data.preprocessing import timm_default, to_layout
from xcit_edge.data.synthetic import make_images
from xcit_edge.metrics import agreement
from xcit_edge.model.zoo import FIXTURE
from xcit_edge.targets import all_targets

pytest.importorskip("timm")

FOREIGN = FIXTURES_DIR / "foreign"
SOURCES = sorted(p.name for p in FOREIGN.iterdir() if (p / "saved_model.pb").is_file())
LAYOUT = {"onnx-tf-nhwc-wrapper": "NWHC", "onnx-tf-nchw": "NCHW", "onnx2tf-1-nchw": "NHWC", "onnx2tf-2-nchw": "NHWC"}
SIZE = 96
ALL = "all"
# CI converts the hub recipe's classifier to every target and the others to the targets their converter's
# debris would break (ONNX: shape math, TFLite: GELU/Erf forms); `-m slow` runs every source x every target.
CI_TARGETS = {"onnx-tf-nhwc-wrapper": ALL, "onnx2tf-2-nchw": "onnx,tflite-int8",
              "onnx-tf-nchw-fe": "onnx,openvino", "onnx2tf-1-nchw": "onnx,tflite-fp16"}


def _features(name: str) -> bool:
    return name.endswith("-fe")


def _recipe(name: str) -> str:
    return name.removesuffix("-fe")


def test_every_foreign_fixture_was_made_by_its_tool():
    assert len(SOURCES) == 8, SOURCES
    for name in SOURCES:
        made = json.loads((FOREIGN / name / "foreign.json").read_text())
        assert made["timm_rel_max_err"] <= 1e-5 and made["features"] == _features(name), (name, made)


@pytest.mark.parametrize("name", SOURCES)
def test_inspect_identifies_the_variant_and_layout_from_the_structure(name):
    res = run("inspect", FOREIGN / name, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["variant"] == FIXTURE.name + ("_fe" if _features(name) else ""), info["variant_origin"]
    assert "identified from the graph" in info["variant_origin"]
    assert info["layout"] == LAYOUT[_recipe(name)]
    st = info["structure"]
    assert (st["patch_size"], st["depth"], st["width"], st["heads"], st["tokens"]) == (8, 4, 64, 4, 144)


@pytest.fixture(scope="module")
def probe():
    """Labelled images the fixture classifies, preprocessed (NHWC) at the foreign models' 96 px."""
    pixels, labels = make_images(48, SIZE, seed=11)
    return normalize(pixels, timm_default(SIZE)), labels


def _convert_and_check(name: str, targets: str, timm_fixture, probe, tmp_path) -> dict:
    """Convert, then hold every artifact to the source SavedModel and to timm; returns target -> manifest."""
    from xcit_edge.graph import prepare

    res = run("--quiet", "convert", FOREIGN / name, "--target", targets, "--out", tmp_path / "out", "--json",
              "--calibration-images", 16)
    assert res.exit_code == 0, res.output
    x, _ = probe
    source = prepare(FOREIGN / name, fuse=False)
    assert source.layout == LAYOUT[_recipe(name)]
    xm = source.model_input(x)
    want_source = source.run(xm)
    want_timm = timm_forward(timm_fixture, x, pre_logits=_features(name))
    manifests = {}
    for entry in json.loads(res.stdout)["artifacts"]:
        man = json.loads(Path(entry["manifest"]).read_text())
        manifests[entry["target"]] = man
        assert entry["xca_fused"] == FIXTURE.depth, entry
        assert man["io"]["input"]["layout"] == LAYOUT[_recipe(name)]
        assert man["source"]["arch"] == FIXTURE.name + ("_fe" if _features(name) else "")
        assert man["rewrites"]["shape_math_folded"] > 0 or not name.startswith("onnx-tf"), man["rewrites"]
        if entry["target"] == "onnx" and name.startswith("onnx-tf"):  # its explicit Pads went into the Convs
            assert man["backend_details"]["rewrites"]["pads_into_conv"] > 0, man["backend_details"]
        spec = all_targets()[entry["target"]]
        mod = backend(spec.backend)
        out = mod.run(mod.load(Path(entry["path"]) / spec.file, spec), xm)
        assert out.shape == want_timm.shape and np.isfinite(out).all(), entry["target"]
        m = agreement(out, want_timm)
        if spec.precision == "fp32":
            assert rel_max_err(out, want_source) <= 1e-5, (entry["target"], rel_max_err(out, want_source))
            assert m["cosine_min"] >= 0.99999, (entry["target"], m)
        elif spec.precision == "fp16":
            assert m["cosine_min"] >= 0.999, (entry["target"], m)
    return manifests


@pytest.mark.parametrize("name", sorted(CI_TARGETS))
def test_foreign_model_converts_fused_and_exact(name, timm_fixture, probe, tmp_path):
    manifests = _convert_and_check(name, CI_TARGETS[name], timm_fixture, probe, tmp_path)
    expected = set(all_targets()) if CI_TARGETS[name] == ALL else set(CI_TARGETS[name].split(","))
    assert set(manifests) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", SOURCES)
def test_every_foreign_model_converts_to_every_target(name, timm_fixture, probe, tmp_path):
    assert set(_convert_and_check(name, ALL, timm_fixture, probe, tmp_path)) == set(all_targets())


def test_a_wrong_layout_cannot_hide(timm_fixture, probe):
    """The hub recipe's model reads its input transposed. The fixture's answer depends on orientation
    (its classes include vertical stripes), so reading the input in the wrong layout is visible: the right
    layout agrees with timm, the plain NHWC reading does not."""
    from xcit_edge.graph import prepare

    x, labels = probe
    graph = prepare(FOREIGN / "onnx-tf-nhwc-wrapper", fuse=False)
    want = timm_forward(timm_fixture, x)
    right = agreement(graph.run(to_layout(x, graph.layout)), want, labels)
    wrong = agreement(graph.run(x), want, labels)
    assert graph.layout == "NWHC" and right["top1_agreement"] == 1.0 and right["cosine_min"] >= 0.9999
    assert wrong["top1_agreement"] <= 0.8, wrong


def test_validate_and_localize_a_fixed_batch_source(tmp_path):
    """onnx2tf writes batch 1: `validate --source` and the per-block localization feed it one image a time."""
    from xcit_edge.graph import prepare
    from xcit_edge.localize import source_block_outputs

    src = FOREIGN / "onnx2tf-2-nchw"
    assert run("--quiet", "convert", src, "--target", "tflite-fp16", "--out", tmp_path / "o").exit_code == 0
    pixels, labels = make_images(24, SIZE, seed=3)
    np.savez(tmp_path / "cal.npz", images=pixels, labels=labels)
    res = run("validate", tmp_path / "o" / "tflite-fp16", "--source", src, "--calibration", tmp_path / "cal.npz",
              "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["artifacts"][0]["passed"]
    graph = prepare(src)
    assert graph.input_shape[0] == 1
    blocks = source_block_outputs(graph, graph.model_input(normalize(pixels[:3], timm_default(SIZE))))
    assert sorted(blocks) == list(range(FIXTURE.depth))
    assert all(b.size == 3 * 144 * FIXTURE.embed_dim for b in blocks.values())  # 3 images of 144 tokens


def test_an_unidentified_xcit_is_refused_unless_allowed(tmp_path):
    """XCiT's structure but no XCiT family (depth 2, width 32: a reduced test config, saved without our
    metadata like a foreign export): `convert` refuses it, naming what it found; --allow-unknown-model accepts."""
    import tensorflow as tf
    from conftest import one_line_error

    from xcit_edge.model.xcit import build_model
    from xcit_edge.model.zoo import reduced_config

    model = build_model(reduced_config(), seed=1)
    m = tf.Module()
    m.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, 64, 64, 3], tf.float32)])
    def serve(x):
        return {"output": model(x)}

    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": serve})
    line = one_line_error(run("convert", tmp_path / "sm", "--target", "onnx", "--out", tmp_path / "o"))
    assert "no XCiT family has depth 2 and width 32" in line and "--allow-unknown-model" in line
    assert not (tmp_path / "o").exists()
    res = run("--quiet", "convert", tmp_path / "sm", "--target", "onnx", "--out", tmp_path / "o",
              "--allow-unknown-model", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["artifacts"][0]["xca_fused"] == 2
