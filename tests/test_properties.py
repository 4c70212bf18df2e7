"""Property-based tests: the readers of untrusted files answer random and mutated bytes with a result or one
clear error (UsageError), never another exception. Seeded (derandomize), so a failure repeats."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from xcit_edge.artifact.manifest import MANIFEST
from xcit_edge.artifact.open import open_artifact
from xcit_edge.data.calibration import load_calibration
from xcit_edge.data.preprocessing import timm_default
from xcit_edge.data.synthetic import make_images
from xcit_edge.errors import UsageError
from xcit_edge.targets import all_targets

PRE = timm_default(32)
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_images(1, 32, seed=3)[0][0]).save(buf, format=fmt)
    return buf.getvalue()


REAL = {"png": _encoded("PNG"), "jpg": _encoded("JPEG"), "gif": _encoded("GIF"), "bmp": _encoded("BMP"),
        "tiff": _encoded("TIFF"), "webp": _encoded("WEBP")}


@st.composite
def mutated_image(draw) -> tuple[str, bytes]:
    """A real encoded image, truncated and with a few bytes overwritten (reaches deep into the decoders),
    or plain random bytes behind a real format's magic number."""
    suffix = draw(st.sampled_from(sorted(REAL)))
    data = bytearray(REAL[suffix])
    if draw(st.booleans()):
        data = bytearray(data[:8]) + bytearray(draw(st.binary(max_size=600)))
    else:
        data = data[: draw(st.integers(0, len(data)))]
        for _ in range(draw(st.integers(0, 8))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return suffix, bytes(data)


@SETTINGS
@given(mutated_image())
def test_calibration_loader_on_mutated_images(case):
    suffix, data = case
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "ok.png").write_bytes(REAL["png"])
        (Path(d) / f"fuzz.{suffix}").write_bytes(data)
        cal = load_calibration(d, PRE)  # the good image always decodes: no error is acceptable
    assert cal.pixels.shape[1:] == (32, 32, 3) and cal.pixels.dtype == np.uint8
    assert len(cal) + len(cal.skipped) == 2


@SETTINGS
@given(st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"PK\x03\x04"]), st.binary(max_size=400),
       st.sampled_from([".npy", ".npz"]))
def test_calibration_array_loader_on_random_bytes(magic, tail, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"cal{suffix}"
        path.write_bytes(magic + tail)
        try:
            cal = load_calibration(path, PRE)
        except UsageError:
            return
    assert len(cal) > 0


def _json_values():
    scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=12)
    return st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                      max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def one_artifact(fixture_artifacts, tmp_path_factory) -> Path:
    src = Path(fixture_artifacts["onnx"]["path"])
    dst = tmp_path_factory.mktemp("prop") / "onnx"
    shutil.copytree(src, dst)
    return dst


def _paths(doc, prefix=()):
    """Every key path in a JSON document (where a mutation can land)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_reader_on_random_bytes_and_mutated_manifests(one_artifact, data):
    """Random bytes, or the real manifest with one field (anywhere) replaced by a random JSON value:
    `open_artifact` opens it or says what is wrong in one UsageError."""
    original = (one_artifact / MANIFEST).read_bytes()
    doc = json.loads(original)
    if data.draw(st.booleans()):
        text = data.draw(st.binary(max_size=300))
    else:
        where = data.draw(st.sampled_from(list(_paths(doc))[1:]))
        node = doc
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = data.draw(_json_values())
        text = json.dumps(doc).encode()
    try:
        (one_artifact / MANIFEST).write_bytes(text)
        art = open_artifact(one_artifact, load=False, run_check=False)  # the reader, not the runtime
        assert art.spec.name in all_targets()
    except UsageError:
        pass
    finally:
        (one_artifact / MANIFEST).write_bytes(original)


def _mutate(data: bytes, draw) -> bytes:
    """Truncate, then overwrite a few bytes: the damage of a cut download or a flipped disk block."""
    out = bytearray(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(0, 6))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


@pytest.fixture(scope="module")
def real_checkpoints(tmp_path_factory) -> dict[str, bytes]:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    state = {"patch_embed.proj.0.0.weight": torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0)),
             "blocks.0.gamma1": torch.ones(8), "cls_token": torch.zeros(1, 1, 8)}
    d = tmp_path_factory.mktemp("ckpt")
    torch.save({"model": state}, d / "a.pth")
    save_file(state, str(d / "a.safetensors"))
    return {s: (d / f"a{s}").read_bytes() for s in (".pth", ".safetensors")}


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_checkpoint_reader_on_mutated_checkpoints(real_checkpoints, data):
    from xcit_edge.model.checkpoint import read_checkpoint

    suffix = data.draw(st.sampled_from(sorted(real_checkpoints)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"w{suffix}"
        path.write_bytes(_mutate(real_checkpoints[suffix], data.draw))
        try:
            tensors = read_checkpoint(path)
        except UsageError:
            return
    assert all(isinstance(v, np.ndarray) for v in tensors.values())


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reference_reader_on_mutated_reference_files(data):
    from xcit_edge.reference import Reference, load_reference

    with tempfile.TemporaryDirectory() as d:
        good = Reference(np.ones((3, 10), np.float32), ["a", "b", "c"], np.arange(3), "0" * 64, "1" * 64,
                         {"model": "m"}).save(Path(d) / "ref.npz")
        good.write_bytes(_mutate(good.read_bytes(), data.draw))
        try:
            ref = load_reference(good)
        except UsageError:
            return
    assert ref.outputs.shape[0] == len(ref.names)
