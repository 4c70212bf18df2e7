"""Calibration data: every accepted layout, labels, skipped images, subsets, and clear refusals."""

import logging

import numpy as np
import pytest
from PIL import Image

from xcit_edge.data.calibration import (
    decode_image,
    imagenet_labels,
    imagenet_synsets,
    load_calibration,
    normalize,
    subset_definitions,
)
from xcit_edge.data.preprocessing import Preprocessing, timm_default
from xcit_edge.data.synthetic import CLASSES, make_images, write_folder
from xcit_edge.errors import UsageError

PRE = timm_default(64)


def test_imagenet_tables_ship_with_the_package():
    labels, synsets = imagenet_labels(), imagenet_synsets()
    assert len(labels) == len(synsets) == 1000
    assert synsets[0] == "n01440764" and labels[0] == "tench" and labels[207] == "golden retriever"
    subset = subset_definitions()["imagenet-val-1k"].read_text().splitlines()
    rows = [r.split("\t") for r in subset if not r.startswith("#")]
    assert len(rows) == 1000 and sorted(int(c) for _, c in rows) == list(range(1000))  # one image per class
    assert len({f for f, _ in rows}) == 1000


def test_shipped_sample_decodes_with_labels_for_the_fixture():
    cal = load_calibration("sample", PRE, class_names=list(CLASSES))
    assert cal.pixels.shape == (80, 64, 64, 3) and cal.pixels.dtype == np.uint8
    assert sorted(set(cal.labels.tolist())) == list(range(10))


def test_imagenet_style_folder_by_synset(tmp_path):
    for i, synset in enumerate(imagenet_synsets()[:3]):
        (tmp_path / synset).mkdir()
        Image.fromarray(make_images(1, 80, seed=i)[0][0]).save(tmp_path / synset / f"{i}.JPEG")
    cal = load_calibration(tmp_path, PRE, class_names=imagenet_labels())
    assert cal.labels.tolist() == [0, 1, 2] and cal.pixels.shape == (3, 64, 64, 3)


def test_plain_folder_with_labels_file_and_a_broken_image(tmp_path, caplog):
    pix, labels = make_images(4, 64, seed=0)
    for i, p in enumerate(pix):
        Image.fromarray(p).save(tmp_path / f"img{i}.png")
    (tmp_path / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    lab = tmp_path.parent / "labels.txt"
    lab.write_text("".join(f"img{i}.png {CLASSES[c]}\n" for i, c in enumerate(labels)) + "zz_broken.jpg 0\n")
    with caplog.at_level(logging.WARNING):
        cal = load_calibration(tmp_path, PRE, class_names=list(CLASSES), labels_file=lab)
    assert len(cal) == 4 and cal.labels.tolist() == labels.tolist()
    assert [n for n, _ in cal.skipped] == [str(tmp_path / "zz_broken.jpg")]
    assert "skipped 1 unreadable image(s): zz_broken.jpg" in caplog.text
    np.testing.assert_array_equal(cal.pixels, pix)  # same size: resize and crop are the identity


def test_labels_file_that_does_not_match(tmp_path):
    Image.fromarray(make_images(1, 64)[0][0]).save(tmp_path / "a.png")
    lab = tmp_path.parent / "l.txt"
    lab.write_text("b.png 3\n")
    with pytest.raises(UsageError, match="no label for 1 images"):
        load_calibration(tmp_path, PRE, labels_file=lab)


def test_npz_uint8_and_float_arrays(tmp_path):
    pix, labels = make_images(6, 96, seed=1)
    np.savez(tmp_path / "u8.npz", images=pix, labels=labels)
    cal = load_calibration(tmp_path / "u8.npz", PRE)
    assert cal.pixels.shape == (6, 64, 64, 3) and cal.labels.tolist() == labels.tolist()
    floats = normalize(make_images(3, 64)[0], PRE)
    np.save(tmp_path / "f.npy", floats)
    cal = load_calibration(tmp_path / "f.npy", PRE)
    np.testing.assert_array_equal(cal.model_ready(PRE, baked=False), floats)
    with pytest.raises(UsageError, match="cannot feed a model that takes uint8"):
        cal.model_ready(PRE, baked=True)
    np.save(tmp_path / "bad.npy", np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(UsageError, match="preprocessed NHWC"):
        load_calibration(tmp_path / "bad.npy", PRE)
    (tmp_path / "pickle.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UsageError, match="unreadable array"):
        load_calibration(tmp_path / "pickle.npy", PRE)


def test_subset_definition_finds_files_anywhere_under_the_root(tmp_path, caplog):
    rows = [r.split("\t") for r in subset_definitions()["imagenet-val-1k"].read_text().splitlines()
            if not r.startswith("#")]
    for name, cls in rows[:3]:
        d = tmp_path / imagenet_synsets()[int(cls)]
        d.mkdir()
        Image.fromarray(make_images(1, 64)[0][0]).save(d / name, format="JPEG")
    with caplog.at_level(logging.WARNING):
        cal = load_calibration(f"imagenet-val-1k@{tmp_path}", PRE)
    assert cal.labels.tolist() == [int(c) for _, c in rows[:3]]
    assert "997 of 1000 subset images missing" in caplog.text


def test_limit_spreads_over_classes(tmp_path):
    write_folder(tmp_path, per_class=3, size=64, seed=0)
    cal = load_calibration(tmp_path, PRE, class_names=list(CLASSES), limit=10)
    assert len(cal) == 10 and len(set(cal.labels.tolist())) >= 9


def test_resize_and_centre_crop_follow_timm(tmp_path):
    """timm's eval transform: shorter side to size/crop_pct (bicubic), centre crop."""
    pytest.importorskip("timm")
    import torch
    from timm.data import create_transform

    img = Image.fromarray(make_images(1, 150, seed=4)[0][0]).resize((150, 100))
    img.save(tmp_path / "x.png")
    pre = Preprocessing(size=(64, 64), crop_pct=0.875)
    ours = normalize(decode_image(tmp_path / "x.png", pre)[None], pre)[0]
    tf = create_transform(64, interpolation="bicubic", crop_pct=0.875)
    ref = tf(Image.open(tmp_path / "x.png").convert("RGB")).permute(1, 2, 0).numpy()
    assert torch is not None
    np.testing.assert_allclose(ours, ref, atol=1e-5)  # same PIL resize, same crop box


def test_hostile_images_are_skipped_not_fatal(tmp_path):
    Image.fromarray(make_images(1, 64)[0][0]).save(tmp_path / "ok.png")
    Image.new("L", (9000, 9000)).save(tmp_path / "huge.png")  # 81 MP > the decompression-bomb cap
    cal = load_calibration(tmp_path, PRE)
    assert len(cal) == 1 and cal.skipped[0][0].endswith("huge.png")


def test_nothing_found(tmp_path):
    with pytest.raises(UsageError, match="calibration data not found"):
        load_calibration(tmp_path / "missing", PRE)
    with pytest.raises(UsageError, match="no images found"):
        load_calibration(tmp_path, PRE)


def _png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG that claims `width` x `height` with almost no data: a decompression bomb's opening."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_every_bad_image_kind_is_skipped_and_named_every_odd_one_decoded(tmp_path, caplog):
    """Truncated, corrupt, not-an-image, bomb and looping files are skipped by name; CMYK, grayscale,
    RGBA, 16-bit, misnamed and non-UTF-8-named images decode to the right RGB pixels."""
    import json
    import os

    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "good.jpg", quality=95)
    whole = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (tmp_path / "notes.jpg").write_text("not an image at all\n")
    (tmp_path / "bomb.png").write_bytes(_png_claiming(30_000, 30_000))  # 900 MP claimed in 65 bytes
    os.symlink("loop-b.png", tmp_path / "loop-a.png")
    os.symlink("loop-a.png", tmp_path / "loop-b.png")
    (tmp_path / "sub").mkdir()
    os.symlink("..", tmp_path / "sub" / "up")  # a directory loop: rglob must not follow it
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    Image.new("L", (64, 64), 200).save(tmp_path / "gray.png")
    Image.new("RGBA", (64, 64), (0, 0, 255, 0)).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((64, 64), 32896, np.uint16)).save(tmp_path / "gray16.png")  # 32896/257 = 128
    Image.fromarray(red).save(tmp_path / "really-a-png.jpg", format="PNG")
    Image.fromarray(red).save(os.fsencode(tmp_path) + b"/caf\xe9-latin1.png")  # not UTF-8

    with caplog.at_level(logging.WARNING):
        cal = load_calibration(tmp_path, PRE)
    skipped = sorted(os.path.basename(n) for n, _ in cal.skipped)
    assert skipped == ["bomb.png", "corrupt.png", "notes.jpg", "truncated.jpg"]
    assert "skipped 4 unreadable image(s)" in caplog.text
    px = {os.path.basename(n): cal.pixels[i].astype(int).mean(axis=(0, 1)) for i, n in enumerate(cal.names)}
    assert sorted(px) == ["caf\ufffd-latin1.png", "cmyk.jpg", "good.jpg", "gray.png", "gray16.png",
                          "really-a-png.jpg", "rgba.png"]
    np.testing.assert_allclose(px["cmyk.jpg"], [255, 0, 0], atol=3)
    np.testing.assert_allclose(px["gray.png"], [200, 200, 200], atol=0)
    np.testing.assert_allclose(px["rgba.png"], [0, 0, 255], atol=0)  # alpha dropped, as timm's loader does
    np.testing.assert_allclose(px["gray16.png"], [128, 128, 128], atol=0)  # scaled, not clipped to 255
    np.testing.assert_allclose(px["really-a-png.jpg"], [255, 0, 0], atol=0)
    json.dumps(cal.names, ensure_ascii=False).encode("utf-8")  # printable everywhere downstream


def _spool_everything(monkeypatch, batch_images: int, size: int = 64) -> None:
    """Thresholds small enough that a test-sized set streams: spooled to disk, `batch_images` per batch."""
    from xcit_edge.data import calibration

    monkeypatch.setattr(calibration, "SPOOL_BYTES", 1)
    monkeypatch.setattr(calibration, "BATCH_BYTES", batch_images * size * size * 3 * 4)


def test_a_large_set_streams_from_disk_and_is_the_same_set(tmp_path, monkeypatch):
    """Spooled to a temp file and read back in batches, the set has the same pixels, digests, labels and
    model inputs as one decoded into memory (a reference made one way validates the other)."""
    write_folder(tmp_path / "imgs", per_class=3, size=80, seed=4)  # 30 images, 80 px -> resized to 64
    whole = load_calibration(tmp_path / "imgs", PRE, class_names=list(CLASSES))
    _spool_everything(monkeypatch, batch_images=7)
    spooled = load_calibration(tmp_path / "imgs", PRE, class_names=list(CLASSES))
    assert spooled.spooled and not whole.spooled and spooled.pixels.shape == whole.pixels.shape == (30, 64, 64, 3)
    np.testing.assert_array_equal(np.asarray(spooled.pixels), whole.pixels)
    assert spooled.images_digest == whole.images_digest and spooled.digest == whole.digest
    assert spooled.labels.tolist() == whole.labels.tolist() and spooled.names == whole.names
    batches = list(spooled.batches(PRE, False, spooled.batch_rows()))
    assert [len(b) for b in batches] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate(batches), whole.model_ready(PRE, False))
    np.testing.assert_array_equal(spooled.take(5).pixels, whole.pixels[:5])
    np.testing.assert_array_equal(spooled.pixels[-1], whole.pixels[-1])


def test_spooling_without_the_disk_for_it_is_one_clear_error(tmp_path, monkeypatch):
    import shutil

    from xcit_edge.data import calibration

    write_folder(tmp_path / "imgs", per_class=1, size=64, seed=4)
    _spool_everything(monkeypatch, batch_images=2)
    monkeypatch.setattr(calibration.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 100))
    with pytest.raises(UsageError, match=r"needs 0\.1 MB of temporary disk in .* 0\.0 MB free: set TMPDIR"):
        load_calibration(tmp_path / "imgs", PRE)
    monkeypatch.undo()
    _spool_everything(monkeypatch, batch_images=2)

    class FullDisk:
        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(calibration.tempfile, "TemporaryFile", lambda **kw: FullDisk())
    with pytest.raises(UsageError, match=r"cannot spool decoded images to .*No space left on device"):
        load_calibration(tmp_path / "imgs", PRE)
