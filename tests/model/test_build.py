"""`xcit-edge build`: the TF Hub serving contract, seeded determinism, recorded preprocessing,
and one-line failures that write nothing."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import images, one_line_error, rel_max_err, run, seeded_timm_model, timm_forward

from xcit_edge.model.savedmodel import read_metadata
from xcit_edge.util.fs import sha256_tree

NANO = "xcit_nano_12_p16_224"


@pytest.fixture(scope="module")
def nano_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "nano"
    assert run("build", NANO, "--seed", "3", "--out", str(out)).exit_code == 0
    return out


def test_signature_matches_the_tf_hub_collection(nano_dir):
    loaded = tf.saved_model.load(str(nano_dir))
    fn = loaded.signatures["serving_default"]
    (spec,) = fn.structured_input_signature[1].values()
    assert list(fn.structured_input_signature[1]) == ["input"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 224, 224, 3]
    assert {k: v.shape.as_list() for k, v in fn.structured_outputs.items()} == {"output": [None, 1000]}
    out = fn(input=tf.constant(images(3, 224)))["output"]
    assert out.shape == (3, 1000) and np.isfinite(out.numpy()).all()


def test_preprocessing_and_provenance_are_recorded(nano_dir):
    meta = read_metadata(nano_dir)
    assert meta["arch"] == NANO and meta["weights"] == {"source": "random", "seed": 3}
    pre = meta["preprocessing"]
    assert pre["size"] == [224, 224] and pre["interpolation"] == "bicubic"
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    loaded = tf.saved_model.load(str(nano_dir))  # the asset is tracked by the SavedModel itself
    assert json.loads(open(loaded.xcit_edge_metadata.asset_path.numpy().decode()).read()) == meta


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "xcit_edge.cli", *args], capture_output=True, text=True, timeout=300)


def test_same_seed_same_file_other_seed_other_weights(tmp_path):
    """Fresh processes, as users run it: every byte of the SavedModel is reproducible."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in [(a, "3"), (b, "3"), (c, "4")]:  # the small fixture architecture: same code, less time
        assert _cli("build", "xcit_fixture_4_p8_64", "--seed", seed, "--out", str(out)).returncode == 0
    assert sha256_tree(a) == sha256_tree(b)
    data = "variables/variables.data-00000-of-00001"
    assert (a / data).read_bytes() != (c / data).read_bytes()


def test_features_and_hub_fe_name(tmp_path):
    for arch, flag in [(NANO, ["--features"]), (NANO + "_fe", [])]:
        out = tmp_path / arch
        res = run("build", arch, *flag, "--out", str(out), "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["features"] is True
        fn = tf.saved_model.load(str(out)).signatures["serving_default"]
        assert fn.structured_outputs["output"].shape.as_list() == [None, 128]


def test_built_with_timm_weights_matches_timm(tmp_path):
    torch = pytest.importorskip("torch")
    ref = seeded_timm_model(NANO, seed=11)
    ckpt = tmp_path / "w.pth"
    torch.save(ref.state_dict(), ckpt)
    out = tmp_path / "sm"
    res = run("build", NANO, "--weights", str(ckpt), "--out", str(out))
    assert res.exit_code == 0, res.output
    x = images(2, 224, seed=9)
    got = tf.saved_model.load(str(out)).signatures["serving_default"](input=tf.constant(x))["output"].numpy()
    assert rel_max_err(got, timm_forward(ref, x)) < 1e-4
    assert read_metadata(out)["weights"]["sha256"]


def test_bad_inputs_one_line_nonzero_nothing_written(tmp_path, nano_dir):
    torch = pytest.importorskip("torch")
    out = tmp_path / "out"
    assert "unknown architecture" in one_line_error(run("build", "xcit_giant_12_p16_224", "--out", str(out)))
    wrong = tmp_path / "tiny.pth"
    torch.save(seeded_timm_model("xcit_tiny_12_p16_224").state_dict(), wrong)
    assert "does not fit" in one_line_error(run("build", NANO, "--weights", str(wrong), "--out", str(out)))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    assert "checkpoint" in one_line_error(run("build", NANO, "--weights", str(junk), "--out", str(out)))
    assert "not found" in one_line_error(run("build", NANO, "--weights", str(tmp_path / "nope.pth"), "--out", str(out)))
    assert not out.exists()
    assert set(tmp_path.iterdir()) == {wrong, junk}

    before = sorted(p.name for p in nano_dir.iterdir())
    assert "not empty" in one_line_error(run("build", NANO, "--out", str(nano_dir)))
    assert sorted(p.name for p in nano_dir.iterdir()) == before
    assert "cannot write" in one_line_error(run("build", NANO, "--out", "/proc/xcit-edge-test"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a directory" in one_line_error(run("build", NANO, "--out", str(afile)))


def test_force_replaces_a_finished_output(tmp_path):
    out = tmp_path / "sm"
    out.mkdir()
    (out / "old.txt").write_text("old")
    res = run("build", "xcit_nano_12_p16_224", "--out", str(out), "--force")
    assert res.exit_code == 0, res.output
    assert not (out / "old.txt").exists() and (out / "saved_model.pb").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]  # no temp leftovers


def test_console_script_prints_one_line_without_tensorflow_banner(tmp_path):
    proc = _cli("build", "resnet50", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown architecture" in proc.stderr


def test_help_lists_commands_and_version():
    res = run("--help")
    assert res.exit_code == 0 and "build" in res.output and "inspect" in res.output
    from xcit_edge import __version__

    assert __version__ in run("--version").output


def test_disk_full_is_one_line_and_leaves_nothing(tiny_disk):
    out = tiny_disk / "made" / "for" / "nano"  # parents made for the write are removed again
    line = one_line_error(run("build", NANO, "--out", str(out)))
    assert "No space left on device" in line and "function_node" not in line
    assert list(tiny_disk.iterdir()) == []


def test_missing_parents_are_created_and_removed_again_on_failure(tmp_path):
    out = tmp_path / "a" / "b" / "nano"
    res = run("build", NANO, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "saved_model.pb").is_file()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    # a bad checkpoint is caught before any directory is made
    one_line_error(run("build", NANO, "--weights", str(junk), "--out", str(tmp_path / "x" / "y")))
    assert not (tmp_path / "x").exists()


def test_random_init_nano_gets_every_fusion(nano_dir, tmp_path):
    """Command 1's model: a fresh init has LayerScale gammas, temperatures and LayerNorm γ exactly 1 and β 0,
    which TensorFlow's optimizer folds away before tf2onnx; the rewrites match what the graph computes, so
    the ONNX artifact still shows one XCA function node per block and every LayerNorm as one node."""
    import onnx

    res = run("--quiet", "convert", str(nano_dir), "--target", "onnx", "--out", str(tmp_path / "o"), "--json",
              "--calibration-images", 4)
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(res.stdout)["artifacts"]
    assert entry["xca_fused"] == 12 and entry["check"]["cosine_mean"] >= 0.9999, entry
    ops = [n.op_type for n in onnx.load(str(tmp_path / "o" / "onnx" / "model.onnx")).graph.node]
    assert ops.count("XCA") == 12
    assert ops.count("LayerNormalization") == 41  # 12 blocks x 3, 2 class-attention blocks x 2, the final norm
