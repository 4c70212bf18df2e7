"""Shared test helpers: seeded timm references, a private cache, quiet TensorFlow."""

from __future__ import annotations

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# torch (the test-only reference) must be loaded before TensorFlow: the other order
# segfaults in torchvision's import with TF 2.21 + torch 2.14 in one process.
with contextlib.suppress(ImportError):
    import timm  # noqa: F401
    import torch  # noqa: F401

from xcit_edge.util.tfimport import import_tensorflow_quietly

import_tensorflow_quietly()

from support.timm_ref import images, rel_max_err, seeded_timm_model, timm_forward  # noqa: E402, F401

from xcit_edge.data.synthetic import make_images  # noqa: E402
from xcit_edge.model.zoo import FIXTURE  # noqa: E402


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own model cache, so nothing leaks between tests or into ~."""
    monkeypatch.setenv("XCIT_EDGE_CACHE", str(tmp_path_factory.mktemp("cache")))


REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = Path(__file__).parent / "fixtures"  # tests/fixtures, whatever folder a test module is in
FIXTURE_WEIGHTS = FIXTURES_DIR / f"{FIXTURE.name}.safetensors"


@pytest.fixture(scope="session")
def timm_fixture():
    """The trained fixture in timm (the independent reference for it)."""
    pytest.importorskip("timm")
    from safetensors.torch import load_file
    from timm.models.xcit import Xcit

    c = FIXTURE
    model = Xcit(img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
                 num_heads=c.num_heads, num_classes=c.num_classes, eta=c.eta, tokens_norm=c.tokens_norm)
    model.load_state_dict(load_file(FIXTURE_WEIGHTS))
    return model.eval()


def shared_once(tmp_path_factory, worker_id: str, name: str, make: Callable[[Path], object]):
    """A session fixture built once per test run, not once per xdist worker (each worker is a session of its
    own): the first worker to get here builds it under a file lock in the run's shared temp root and writes
    its value as JSON, the others read that (pytest-xdist's documented pattern). `make(dir)` returns
    what JSON holds (paths as strings)."""
    from filelock import FileLock

    if worker_id == "master":
        return make(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent
    value = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not value.is_file():
            work = root / name
            work.mkdir()
            value.write_text(json.dumps(make(work)))
    return json.loads(value.read_text())


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory, worker_id):
    """The trained fixture as our SavedModel (one for the whole run: artifacts built from it are shared)."""
    from xcit_edge.model.build import build

    def make(work: Path) -> str:
        build(FIXTURE.name, work / "fixture", weights=FIXTURE_WEIGHTS)
        return str(work / "fixture")
    return Path(shared_once(tmp_path_factory, worker_id, "fixture-dir", make))


@pytest.fixture(scope="session")
def held_out():
    """Images the fixture never saw (training used seed 1, its validation seed 2)."""
    pixels, labels = make_images(300, FIXTURE.img_size, seed=11)
    return pixels, labels


@pytest.fixture(scope="session")
def calib_npz(tmp_path_factory, worker_id):
    """200 labelled calibration images (seed 10), as convert takes them."""
    def make(work: Path) -> str:
        pixels, labels = make_images(200, FIXTURE.img_size, seed=10)
        np.savez(work / "calib.npz", images=pixels, labels=labels)
        return str(work / "calib.npz")
    return Path(shared_once(tmp_path_factory, worker_id, "calib", make))


@pytest.fixture(scope="session")
def fixture_artifacts(fixture_dir, calib_npz, tmp_path_factory, worker_id):
    """The fixture converted to every target, once per test run (convert's --json entries by target)."""
    def make(work: Path) -> dict:
        res = run("--quiet", "convert", fixture_dir, "--target", "all", "--out", work / "out",
                  "--calibration", calib_npz, "--json")
        assert res.exit_code == 0, res.output
        return {a["target"]: a for a in json.loads(res.stdout)["artifacts"]}
    return shared_once(tmp_path_factory, worker_id, "fixture-artifacts", make)


def run(*args):
    """The CLI in-process (click's runner), stdout and stderr kept apart."""
    from click.testing import CliRunner

    from xcit_edge.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


PROGRESS_LINE = re.compile(r"^\[\d+:\d\d\] .* \(\d+/\d+\)$")  # the CLI's progress off a terminal


def one_line_error(result, code=2):
    """Assert a failure printed exactly one `error:` line (no traceback) with exit `code`."""
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if not PROGRESS_LINE.match(ln)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs: a real 'No space left on device' (skipped where mounting is not allowed)."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def onnx2tf_saved_model(model, size: int, workdir):
    """A foreign SavedModel the way users make one: timm -> torch.onnx.export -> onnx2tf.

    ONNX Runtime's basic graph optimizations fold the Fourier position encoding first (onnx2tf
    1.29 fails on its Expand otherwise). onnx2tf reads a calibration sample from the working
    directory or downloads it; a seeded one is written so nothing is fetched.
    """
    import os
    import subprocess
    import sys

    import numpy as np
    import onnxruntime as ort
    import torch

    pytest.importorskip("onnx2tf")
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path, folded = workdir / "model.onnx", workdir / "folded.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, size, size), str(onnx_path), opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamo=False)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    sample = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
    np.save(workdir / "calibration_image_sample_data_20x128x128x3_float32.npy", sample)
    out = workdir / "saved_model"
    proc = subprocess.run([sys.executable, "-m", "onnx2tf.onnx2tf", "-i", str(folded), "-o", str(out), "-osd", "-n"],
                          cwd=workdir, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
    assert (out / "saved_model.pb").is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def nano(tmp_path_factory):
    """A seeded timm nano (p16, 224) and its weights as safetensors."""
    pytest.importorskip("timm")
    from safetensors.torch import save_file

    model = seeded_timm_model("xcit_nano_12_p16_224", seed=5)
    path = tmp_path_factory.mktemp("w") / "nano.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model, path
