"""Checkpoints are untrusted: read tensors, never run code, fail in one line on garbage."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from xcit_edge.errors import UsageError
from xcit_edge.model.checkpoint import read_checkpoint

torch = pytest.importorskip("torch")


def test_reads_fp32_fp16_bf16_and_views(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    state = {
        "a": base,
        "half": base.half(),
        "bf16": base.bfloat16(),
        "t": base.t(),  # non-contiguous view of a shared storage
        "row": base[2],
        "scalar": torch.tensor(3.5),
        "n": torch.tensor(7),
    }
    path = tmp_path / "m.pth"
    torch.save(state, path)
    out = read_checkpoint(path)
    for k, v in state.items():
        np.testing.assert_array_equal(out[k], v.float().numpy() if v.is_floating_point() else v.numpy(), err_msg=k)


def _malicious_pth(path, marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    pickle.dump({"model": {"w": Evil()}}, buf, protocol=2)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")


def test_a_pickled_callable_is_never_called(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _malicious_pth(path, marker)
    with pytest.raises(UsageError, match="no tensors"):
        read_checkpoint(path)
    assert not marker.exists()


def test_unknown_globals_become_inert_records(tmp_path):
    import argparse

    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1.0)}, path)
    assert list(read_checkpoint(path)) == ["w"]


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", b"PK\x03\x04 truncated zip", b"\x80\x02}q\x00.", os.urandom(4096)],
    ids=["empty", "text", "truncated-zip", "legacy-pickle", "random"],
)
def test_garbage_is_a_one_line_usage_error(tmp_path, content):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(UsageError) as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value)


def test_zip_without_pickle_and_corrupt_safetensors(tmp_path):
    z = tmp_path / "w.pth"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("x/readme.txt", "hi")
    with pytest.raises(UsageError, match=r"no data\.pkl"):
        read_checkpoint(z)
    s = tmp_path / "w.safetensors"
    s.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(UsageError, match="safetensors"):
        read_checkpoint(s)
    with pytest.raises(UsageError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_tensor_pointing_outside_its_storage_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(4)}, path)
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    key = next(n for n in files if n.endswith("/data/0"))
    files[key] = files[key][:4]  # storage now holds 1 float, the tensor claims 4
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in files.items():
            zf.writestr(n, b)
    with pytest.raises(UsageError, match="outside its storage"):
        read_checkpoint(path)
