"""`xcit-edge validate` and `xcit-edge reference` on the trained fixture: good artifacts of every target
pass, sabotaged ones fail with the fault named, stored references equal live ones, and bad input
gets one line and exit 2. Accuracies are checked against timm (the independent reference)."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_WEIGHTS, one_line_error, run, timm_forward

from xcit_edge.backends import backend
from xcit_edge.data.calibration import normalize
from xcit_edge.data.preprocessing import timm_default
from xcit_edge.data.synthetic import make_images
from xcit_edge.model.build import build
from xcit_edge.model.zoo import FIXTURE
from xcit_edge.targets import all_targets

pytest.importorskip("timm")
PRE = timm_default(FIXTURE.img_size)


@pytest.fixture(scope="module")
def held_npz(held_out, tmp_path_factory):
    path = tmp_path_factory.mktemp("held") / "held.npz"
    np.savez(path, images=held_out[0], labels=held_out[1])
    return path


@pytest.fixture(scope="module")
def good(fixture_artifacts, fixture_dir, held_npz, tmp_path_factory):
    """Every target's artifact validated against the source on 300 held-out images, with a report."""
    report = tmp_path_factory.mktemp("report") / "r"
    paths = [e["path"] for e in fixture_artifacts.values()]
    res = run("--quiet", "validate", *paths, "--source", fixture_dir, "--calibration", held_npz,
              "--report", report, "--json")
    return res, report


def _run_artifact(path: Path, x: np.ndarray) -> np.ndarray:
    spec = all_targets()[path.name]
    mod = backend(spec.backend)
    return mod.run(mod.load(path / spec.file, spec), x)


def test_every_good_artifact_passes_and_the_figures_are_timms(good, fixture_artifacts, timm_fixture, held_out):
    res, _ = good
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["passed"] and {a["target"] for a in doc["artifacts"]} == set(all_targets())
    pixels, labels = held_out
    ref = timm_forward(timm_fixture, normalize(pixels, PRE))
    for a in doc["artifacts"]:
        m = a["metrics"]
        assert a["passed"] and not a["failures"] and m["images"] == len(labels)
        assert m["reference_accuracy"] == pytest.approx((ref.argmax(1) == labels).mean())
        out = _run_artifact(Path(a["path"]), normalize(pixels, PRE))  # the artifact, run here, against timm
        assert m["top1_agreement"] == pytest.approx((out.argmax(1) == ref.argmax(1)).mean(), abs=1.5 / len(labels))
        assert m["accuracy"] == pytest.approx((out.argmax(1) == labels).mean(), abs=1.5 / len(labels))
        assert m["top5_agreement"] >= m["top1_agreement"] and m["kl_mean"] >= 0
        assert a["latency_ms"]["median"] > 0 and len(a["worst_images"]) == 8
        if all_targets()[a["target"]].quantized:
            assert 1 - m["cosine_mean"] > 1e-6  # really quantized, really compared (float: ~1e-12)
        assert a["localization"] is None  # only failures are localized


def test_report_has_every_part(good):
    res, report = good
    doc = json.loads((report / "report.json").read_text())
    assert doc == json.loads(res.stdout)
    md = (report / "report.md").read_text()
    for target in all_targets():
        assert f"| {target} | pass |" in md
    for png in ("scatter.png", "error_histogram.png", "per_class_drop.png", "latency.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md
    page = (report / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 4 and "http://" not in page and "https://" not in page


def test_html_report_renders_in_headless_chromium(good, tmp_path):
    """The single-file report opens offline in a browser and its plots are drawn (matplotlib's blue
    and orange are on screen), not broken-image icons."""
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (scripts/test.sh installs Debian's chromium where it can)")
    page = (good[1] / "report.html").resolve().as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "xcit-edge validation report" in dom and dom.count("<img") == 4
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1300,3000", f"--screenshot={shot}", page], capture_output=True, timeout=120)
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    near = lambda rgb: (np.abs(px - np.array(rgb)).sum(-1) < 40).sum()  # noqa: E731
    assert near((31, 119, 180)) > 500 and near((255, 127, 14)) > 500, (near((31, 119, 180)), near((255, 127, 14)))


def test_stored_reference_gives_the_same_results(good, fixture_artifacts, fixture_dir, held_npz, tmp_path):
    ref = tmp_path / "ref.npz"
    res = run("--quiet", "reference", fixture_dir, "--calibration", held_npz, "--out", ref, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["images"] == 300 and info["device"] == "cpu" and info["outputs"] == [300, 10]
    paths = [fixture_artifacts[t]["path"] for t in ("onnx", "tflite-int8")]
    res = run("--quiet", "validate", *paths, "--reference", ref, "--calibration", held_npz, "--json")
    assert res.exit_code == 0, res.output
    live = {a["target"]: a for a in json.loads(good[0].stdout)["artifacts"]}
    stored = json.loads(res.stdout)
    assert stored["reference"]["from"] == "file" and stored["reference"]["tensorflow"]
    for a in stored["artifacts"]:
        assert a["metrics"] == live[a["target"]]["metrics"], a["target"]
        assert a["worst_images"] == live[a["target"]]["worst_images"]


@pytest.fixture(scope="module")
def sabotaged(tmp_path_factory):
    """The fixture with (a) 5 % noise on every weight matrix, (b) classes 0 and 1 swapped in the head."""
    from safetensors.numpy import load_file, save_file
    from support.timm_ref import sabotaged as broken

    root = tmp_path_factory.mktemp("sabotage")
    out = {}
    for name, weights in broken(load_file(FIXTURE_WEIGHTS)).items():
        save_file(weights, root / f"{name}.safetensors")
        build(FIXTURE.name, root / name, weights=root / f"{name}.safetensors")
        res = run("--quiet", "convert", root / name, "--target", "onnx", "--out", root / f"{name}-art")
        assert res.exit_code == 0, res.output
        out[name] = (root / name, root / f"{name}-art" / "onnx")
    return out


def test_noisy_weights_fail_and_the_first_block_is_named(sabotaged, fixture_dir, held_npz, tmp_path):
    res = run("--quiet", "validate", sabotaged["noisy"][1], "--source", fixture_dir, "--calibration", held_npz,
              "--report", tmp_path / "r")
    assert res.exit_code == 1, res.output
    assert "FAIL onnx: cosine" in res.stdout
    assert "first diverging block: XCA block 0" in res.stdout
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Failures" in md and "first diverging block: XCA block 0" in md and "| onnx | FAIL |" in md
    assert "onnx (localization, information): " in md  # where the search looked is not a second failure
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    loc = doc["artifacts"][0]["localization"]
    assert loc["first_diverging_block"] == 0 and len(loc["blocks"]) == FIXTURE.depth
    assert (tmp_path / "r" / "blocks.png").is_file()


def test_swapped_classes_fail_after_the_blocks(sabotaged, fixture_dir, held_npz):
    res = run("--quiet", "validate", sabotaged["swapped"][1], "--source", fixture_dir, "--calibration", held_npz,
              "--json")
    assert res.exit_code == 1, res.output
    a = json.loads(res.stdout)["artifacts"][0]
    assert any(f.startswith("top-1 agreement") for f in a["failures"]) and a["metrics"]["top1_drop"] > 5
    assert a["localization"]["first_diverging_block"] is None
    assert all(b["cosine"] > 0.9999 for b in a["localization"]["blocks"])  # the blocks are untouched
    worst = {(w["reference_top1"], w["artifact_top1"]) for w in a["worst_images"]}
    assert worst <= {("circle", "square"), ("square", "circle")}, worst  # the swapped pair, by name


def test_bad_input_is_one_line_and_exit_2(fixture_artifacts, fixture_dir, held_npz, calib_npz, sabotaged, tmp_path):
    onnx_dir = Path(fixture_artifacts["onnx"]["path"])
    common = ["--calibration", held_npz, "--source", fixture_dir]
    assert "artifact not found" in one_line_error(run("validate", tmp_path / "nope", *common))
    assert "no manifest.json" in one_line_error(run("validate", tmp_path, *common))
    broken = tmp_path / "onnx"
    shutil.copytree(onnx_dir, broken)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    assert "does not match its manifest" in one_line_error(run("validate", broken, *common))
    # a file that matches its (rewritten) manifest but is no model: the runtime refuses it
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    man = json.loads((broken / "manifest.json").read_text())
    from xcit_edge.util.fs import sha256_file

    man["artifact"]["files"][0]["sha256"] = sha256_file(broken / "model.onnx")
    (broken / "manifest.json").write_text(json.dumps(man))
    assert "cannot load model.onnx" in one_line_error(run("validate", broken, *common))
    assert "exactly one of" in one_line_error(run("validate", onnx_dir, "--calibration", held_npz))

    other_model = tmp_path / "other-model.npz"
    res = run("--quiet", "reference", sabotaged["noisy"][0], "--calibration", held_npz, "--out", other_model)
    assert res.exit_code == 0, res.output
    err = one_line_error(run("validate", onnx_dir, "--reference", other_model, "--calibration", held_npz))
    assert "another model" in err
    other_images = tmp_path / "other-images.npz"
    assert run("--quiet", "reference", fixture_dir, "--calibration", calib_npz, "--max-images", 40,
               "--out", other_images).exit_code == 0
    assert "other images" in one_line_error(run("validate", onnx_dir, "--reference", other_images,
                                                "--calibration", held_npz))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    assert "unreadable reference" in one_line_error(run("validate", onnx_dir, "--reference", garbage,
                                                        "--calibration", held_npz))

    from PIL import Image

    folder = tmp_path / "plain"
    folder.mkdir()
    for i, px in enumerate(make_images(5, FIXTURE.img_size, seed=3)[0]):
        Image.fromarray(px).save(folder / f"{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("circle\nsquare\ncross\n")
    err = one_line_error(run("validate", onnx_dir, *common[2:], "--calibration", folder, "--labels", labels))
    assert "3 labels for 5 images" in err


def test_feature_extractor_is_held_to_feature_metrics(tmp_path, held_npz):
    """Features: cosine and nearest-neighbour agreement (no top-1: there are no classes)."""
    from xcit_edge.metrics import neighbours

    sm = tmp_path / "fe"
    build(FIXTURE.name, sm, weights=FIXTURE_WEIGHTS, features=True)
    res = run("--quiet", "convert", sm, "--target", "onnx,openvino-int8", "--out", tmp_path / "a",
              "--calibration", held_npz)
    assert res.exit_code == 0, res.output
    arts = [tmp_path / "a" / "onnx", tmp_path / "a" / "openvino-int8"]
    res = run("--quiet", "validate", *arts, "--source", sm, "--calibration", held_npz, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["kind"] == "features"
    by = {a["target"]: a["metrics"] for a in doc["artifacts"]}
    assert "top1_agreement" not in by["onnx"] and by["onnx"]["nn_agreement"] == 1.0
    # recomputed here: the source's 1-NN among the int8 artifact's 5 nearest
    x = normalize(np.load(held_npz)["images"], PRE)
    from xcit_edge.graph import prepare

    ref, out = prepare(sm).run(x), _run_artifact(arts[1], x)
    want = (neighbours(out, 5) == neighbours(ref, 1)).any(1).mean()
    assert by["openvino-int8"]["nn_agreement"] == pytest.approx(want) and want < 1.0


def test_report_names_images_by_folder_and_file():
    from xcit_edge.report import image_label

    assert image_label("/venv/lib/site-packages/xcit_edge/_calibration/sample/circle/0007.jpg") == "circle/0007.jpg"
    assert image_label("held.npz[12]") == "held.npz[12]"


def test_a_streamed_set_gives_the_same_reference_and_verdicts(fixture_artifacts, fixture_dir, timm_fixture,
                                                              tmp_path, monkeypatch):
    """A folder spooled to disk and walked in batches of 7 (not a multiple of the global batch 4): the same
    reference outputs, in order, as the set decoded into memory, and timm's; a reference made from the
    in-memory set validates the streamed one with the same figures."""
    from xcit_edge.data import calibration
    from xcit_edge.data.synthetic import write_folder
    from xcit_edge.reference import load_reference

    write_folder(tmp_path / "imgs", per_class=3, size=FIXTURE.img_size, seed=12)
    onnx_art = fixture_artifacts["onnx"]["path"]

    def reference_and_verdict(name: str) -> tuple:
        ref = tmp_path / f"{name}.npz"
        res = run("--quiet", "reference", fixture_dir, "--calibration", tmp_path / "imgs", "--out", ref,
                  "--batch-size", 4)
        assert res.exit_code == 0, res.output
        res = run("--quiet", "validate", onnx_art, "--reference", tmp_path / "whole.npz", "--calibration",
                  tmp_path / "imgs", "--json")
        assert res.exit_code == 0, res.output
        return load_reference(ref), json.loads(res.stdout)["artifacts"][0]["metrics"]

    pixels = np.asarray(calibration.load_calibration(tmp_path / "imgs", PRE).pixels)
    whole, whole_metrics = reference_and_verdict("whole")
    monkeypatch.setattr(calibration, "SPOOL_BYTES", 1)
    monkeypatch.setattr(calibration, "BATCH_BYTES", 7 * pixels[0].size * 4)
    assert calibration.load_calibration(tmp_path / "imgs", PRE).spooled
    streamed, streamed_metrics = reference_and_verdict("streamed")
    assert streamed.calibration_digest == whole.calibration_digest and streamed.names == whole.names
    np.testing.assert_array_equal(streamed.outputs, whole.outputs)
    ref = timm_forward(timm_fixture, normalize(pixels, PRE))
    assert np.abs(streamed.outputs - ref).max() / np.abs(ref).max() < 1e-4
    assert streamed_metrics["images"] == 30
    for key in ("cosine_mean", "max_abs_err", "top1_agreement", "accuracy", "top1_drop"):
        assert streamed_metrics[key] == whole_metrics[key], key
