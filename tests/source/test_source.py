"""Model resolution: local dirs, archives (extracted safely), hub handles, architecture names."""

import io
import tarfile
import urllib.error
import zipfile

import pytest
import tensorflow as tf

from xcit_edge.errors import UsageError
from xcit_edge.source import resolve as source
from xcit_edge.source.resolve import hub_download_url, resolve
from xcit_edge.source.safety import safe_extract


@pytest.fixture(scope="module")
def tiny_saved_model(tmp_path_factory):
    """A minimal SavedModel (not XCiT): resolution does not care what is inside."""
    d = tmp_path_factory.mktemp("sm") / "model"
    m = tf.Module()
    m.v = tf.Variable(2.0)
    m.f = tf.function(lambda x: {"output": x * m.v}, input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    tf.saved_model.save(m, str(d), signatures={"serving_default": m.f})
    return d


@pytest.mark.parametrize("ref, url", [
    ("rishit-dagli/xcit_nano_12_p16_224/1",
     "https://tfhub.dev/rishit-dagli/xcit_nano_12_p16_224/1?tf-hub-format=compressed"),
    ("https://tfhub.dev/rishit-dagli/xcit_small_24_p16_224_fe/1",
     "https://tfhub.dev/rishit-dagli/xcit_small_24_p16_224_fe/1?tf-hub-format=compressed"),
    ("https://www.kaggle.com/models/rishit-dagli/xcit/tensorFlow2/xcit-nano-12-p16-224/1",
     "https://www.kaggle.com/api/v1/models/rishit-dagli/xcit/tensorFlow2/xcit-nano-12-p16-224/1/download"),
    ("rishit-dagli/xcit/tensorFlow2/xcit-nano-12-p16-224/1",
     "https://www.kaggle.com/api/v1/models/rishit-dagli/xcit/tensorFlow2/xcit-nano-12-p16-224/1/download"),
    ("http://tfhub.dev/rishit-dagli/xcit_nano_12_p16_224/1", None),
    ("just-a-word", None),
])
def test_hub_handles(ref, url):
    assert hub_download_url(ref) == url


def test_offline_hub_handle_is_one_line_that_says_what_to_do(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(source.urllib.request.OpenerDirector, "open", offline)
    with pytest.raises(UsageError) as e:
        resolve("rishit-dagli/xcit_nano_12_p16_224/1")
    msg = str(e.value)
    assert "\n" not in msg and "cannot download" in msg and "extracted SavedModel directory" in msg
    assert not [p for p in source.cache_root().rglob("*") if not p.is_dir()]  # nothing half-cached, no lock left


def test_downloads_only_https_from_known_hosts():
    for bad in ["http://tfhub.dev/x", "https://evil.example.com/x.tgz", "file:///etc/passwd"]:
        with pytest.raises(UsageError, match="refusing to download"):
            source._check_url(bad)
    source._check_url("https://storage.googleapis.com/tfhub-modules/x.tar.gz")


def test_local_dir_and_non_saved_model(tiny_saved_model, tmp_path):
    assert resolve(str(tiny_saved_model)).path == tiny_saved_model
    with pytest.raises(UsageError, match="not a SavedModel"):
        resolve(str(tmp_path))
    with pytest.raises(UsageError, match="not a SavedModel directory, archive, hub handle"):
        resolve("nothing-here")
    with pytest.raises(UsageError, match="--weights applies"):
        resolve(str(tiny_saved_model), weights=tmp_path / "w.pth")


def test_archive_is_extracted_once_into_the_cache(tiny_saved_model, tmp_path):
    archive = tmp_path / "m.tar.gz"
    with tarfile.open(archive, "w:gz") as tf_:
        tf_.add(tiny_saved_model, arcname=".")
    first = resolve(str(archive))
    assert first.kind == "archive" and (first.path / "saved_model.pb").is_file()
    stamp = (first.path / "saved_model.pb").stat().st_mtime_ns
    second = resolve(str(archive))
    assert second.path == first.path and (second.path / "saved_model.pb").stat().st_mtime_ns == stamp
    loaded = tf.saved_model.load(str(first.path))
    assert float(loaded.signatures["serving_default"](tf.constant([[1.0, 2, 3]]))["output"][0, 2]) == 6.0


def _tar_with(tmp_path, member: tarfile.TarInfo, data: bytes = b"") -> str:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as t:
        t.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_hostile_tar_members_are_refused(tmp_path, kind):
    info = tarfile.TarInfo({"dotdot": "../escape.txt", "absolute": "/tmp/abs.txt"}.get(kind, "x"))
    data = b""
    if kind in ("dotdot", "absolute"):
        data = b"pwned"
        info.size = len(data)
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    else:
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    archive = _tar_with(tmp_path, info, data)
    dest = tmp_path / "out" / "x"
    with pytest.raises(UsageError, match="refusing"):
        safe_extract(archive, dest)
    assert not dest.exists() and not (tmp_path / "out" / "escape.txt").exists()


def test_hostile_zip_members_are_refused(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("../../escape.txt", "pwned")
    with pytest.raises(UsageError, match="escapes"):
        safe_extract(path, tmp_path / "dest")
    corrupt = tmp_path / "c.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(UsageError):
        resolve(str(corrupt))


def test_architecture_name_is_built_once_and_cached():
    first = resolve("xcit_nano_12_p16_224")
    assert first.kind == "arch" and (first.path / "assets" / "xcit_edge.json").is_file()
    assert resolve("xcit_nano_12_p16_224").path == first.path
