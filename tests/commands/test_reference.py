"""`xcit-edge reference`: one tf.distribute code path for CPU, GPU and TPU. The distributed path runs here
on the CPU split into logical devices (in a fresh process: TensorFlow fixes its devices at start-up);
an unreachable TPU fails fast and writes nothing."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import one_line_error, run

from xcit_edge.reference import load_reference


def _cli(*args, timeout=300):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
    return subprocess.run([sys.executable, "-m", "xcit_edge.cli", "-q", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def images30(held_out, tmp_path_factory):
    """30 labelled images: not a multiple of any global batch used below."""
    path = tmp_path_factory.mktemp("ref") / "30.npz"
    np.savez(path, images=held_out[0][:30], labels=held_out[1][:30])
    return path


def test_distributed_cpu_equals_one_device_in_order(fixture_dir, images30, timm_fixture, tmp_path):
    """4 logical CPU devices x 2 images (global batch 8, last batch padded from 6) against one device with
    batch 2: the same outputs, bit for bit, in input order; and against timm per image."""
    from conftest import timm_forward

    from xcit_edge.data.calibration import normalize
    from xcit_edge.data.preprocessing import timm_default

    four, one = tmp_path / "four.npz", tmp_path / "one.npz"
    res = _cli("reference", fixture_dir, "--calibration", images30, "--out", four, "--replicas", 4,
               "--batch-size", 8, "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["placement"] == "4 logical CPU devices"
    res = _cli("reference", fixture_dir, "--calibration", images30, "--out", one, "--batch-size", 2)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = load_reference(four), load_reference(one)
    assert a.outputs.shape == (30, 10) and np.array_equal(a.outputs, b.outputs)
    assert a.names == b.names and np.array_equal(a.labels, b.labels)
    data = np.load(images30)
    ref = timm_forward(timm_fixture, normalize(data["images"], timm_default(64)))
    assert np.abs(a.outputs - ref).max() / np.abs(ref).max() < 1e-4  # image i's row is image i's output


def test_unreachable_tpu_fails_fast_and_writes_nothing(fixture_dir, images30, tmp_path):
    out = tmp_path / "ref.npz"
    t0 = time.monotonic()
    res = _cli("reference", fixture_dir, "--calibration", images30, "--out", out, "--device", "tpu",
               "--tpu", "no-such-tpu", "--zone", "us-central1-b", "--project", "nowhere", timeout=120)
    assert time.monotonic() - t0 < 60
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TPU 'no-such-tpu'"), res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


_HANGING_TPU = """
import sys, time
import tensorflow as tf
import xcit_edge.distribute as d
d.TPU_CONNECT_TIMEOUT = 2.0
tf.distribute.cluster_resolver.TPUClusterResolver = lambda **kw: time.sleep(600)
from xcit_edge.cli import main
main()
"""


def test_tpu_connection_that_hangs_times_out_and_the_process_exits(fixture_dir, images30, tmp_path):
    """A TPU that never answers (the resolver blocks for 10 minutes): one line after the connect timeout
    (2 s here, 45 s by default), and the process exits instead of waiting for the stuck connection."""
    out = tmp_path / "r.npz"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", _HANGING_TPU, "-q", "reference", str(fixture_dir), "--calibration",
                          str(images30), "--out", str(out), "--device", "tpu", "--tpu", "slow"],
                         capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert res.returncode == 2 and "error: TPU 'slow': no answer within 2 s" in res.stderr, res.stderr
    assert not out.exists()


def test_highest_precision_reaches_xla(fixture_dir):
    """--precision highest turns TF32 off, which TensorFlow's XLA bridge compiles into HIGHEST operand
    precision on every dot (what a TPU then runs in full float32); default leaves it out."""
    import tensorflow as tf

    from xcit_edge.distribute import set_precision

    loaded = tf.saved_model.load(str(fixture_dir))
    fn = loaded.signatures["serving_default"]
    x = tf.zeros([1, 64, 64, 3])
    try:
        for precision, expected in (("highest", True), ("default", False)):
            set_precision(precision)
            hlo = tf.function(lambda t: fn(input=t)["output"], jit_compile=True) \
                .experimental_get_compiler_ir(x)(stage="hlo")
            assert ("operand_precision={highest,highest}" in hlo) is expected, precision
    finally:
        set_precision("default")


def test_convert_writes_the_reference_beside_the_artifacts(fixture_dir, images30, tmp_path):
    out = tmp_path / "o"
    res = run("--quiet", "convert", fixture_dir, "--target", "onnx", "--out", out, "--calibration", images30,
              "--reference-device", "cpu")
    assert res.exit_code == 0, res.output
    assert "--max-images 30" in res.stdout
    ref = load_reference(out / "reference.npz")
    assert len(ref.names) == 30 and ref.meta["device"] == "cpu"
    res = run("--quiet", "validate", *sorted(out.iterdir()), "--reference", out / "reference.npz",  # OUT/*
              "--calibration", images30, "--max-images", 30, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["reference"]["placement"] == "CPU" and [a["target"] for a in doc["artifacts"]] == ["onnx"]


def test_reference_needs_a_gpu_to_run_on_one(fixture_dir, images30, tmp_path):
    res = run("reference", fixture_dir, "--calibration", images30, "--out", tmp_path / "r.npz", "--device", "gpu")
    assert "TensorFlow sees no GPU" in one_line_error(res)
    assert not (tmp_path / "r.npz").exists()


_WITHOUT_CONVERTERS = """
import sys, importlib.abc
BLOCK = {"onnx", "onnxruntime", "openvino", "tf2onnx", "nncf", "ai_edge_litert", "mediapipe", "torch", "timm"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError("not on a TPU host: " + name)
sys.meta_path.insert(0, Block())
from xcit_edge.cli import main
main()
"""


def test_reference_runs_on_a_host_without_the_converters(fixture_dir, images30, tmp_path):
    """The README's TPU-host install has TensorFlow but no converters (nor torch): `reference` must not need them."""
    out = tmp_path / "r.npz"
    res = subprocess.run([sys.executable, "-c", _WITHOUT_CONVERTERS, "-q", "reference", str(fixture_dir),
                          "--calibration", str(images30), "--out", str(out)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_reference(out).outputs.shape == (30, 10)
