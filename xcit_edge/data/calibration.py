"""Calibration and validation data: images in, model-ready arrays out.

Accepted DATA (the `--calibration` value):
* `sample`: the small shipped sample (synthetic shapes, `calibration/sample/`);
* `SUBSET@DIR`: a shipped subset definition (e.g. `imagenet-val-1k@/data/imagenet/val`), a
  list of file names and labels found anywhere under DIR (flat or synset folders);
* an ImageNet-style folder (one subfolder per class: synset `n01440764`, index `0`, or the
  model's own label name);
* a plain folder of images, labels optional (`--labels FILE`: `name label` per line);
* an `.npy` / `.npz` array: uint8 NHWC pixels (resized and normalized here), or float
  arrays already preprocessed for the model (`.npz` keys `images` and optional `labels`).

Images are decoded with Pillow, resized (shorter side to size / crop_pct, timm's eval
transform), centre-cropped, and kept as uint8 pixels; normalization happens last, so a
model with baked-in preprocessing gets the same pixels. Images are untrusted input: any
file Pillow cannot decode (truncated, corrupt, not an image whatever its extension, larger
than MAX_IMAGE_PIXELS) is skipped, counted and named; zero usable images is an error.
Grayscale, palette, CMYK and RGBA images become RGB as timm's loader makes them (alpha
dropped); 16-bit images are scaled to 8 bits (Pillow's own conversion would saturate them).
Symbolic links to folders are not followed below the top level (no loops); file names that
are not UTF-8 are shown with replacement characters.

Large sets stream: decoded pixels beyond SPOOL_BYTES go to an unlinked temporary file
(`SpooledPixels`, in the system temp dir: set TMPDIR to move it) as each image is decoded,
and `CalibrationSet.batches` reads them back a batch at a time, so the 50,000 images of
ImageNet-val (7.5 GB as 224 px uint8, 30 GB as float inputs) never sit in memory at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from xcit_edge.data.preprocessing import Preprocessing
from xcit_edge.data.resources import data_dir
from xcit_edge.errors import UsageError, first_line

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs rather than warn
MAX_ARRAY_BYTES = 8 << 30
SPOOL_BYTES = 256 << 20  # decoded uint8 pixels above this are spooled to a temp file instead of memory
BATCH_BYTES = 64 << 20  # float32 model inputs per streamed batch
Progress = Callable[[int, int], None]


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class SpooledPixels:
    """uint8 (N, H, W, 3) images in an unlinked temporary file, read back a slice at a time.

    Array-like where the code needs it (shape, dtype, len, slicing, np.asarray for small sets):
    a slice is a fresh in-memory array of just those rows, so a consumer that walks it in batches
    holds one batch, and nothing is left on disk when the process ends, however it ends."""

    def __init__(self, image_shape: tuple[int, ...], capacity: int):
        self.dtype = np.dtype(np.uint8)
        self.image_shape = tuple(image_shape)
        self._row = int(np.prod(self.image_shape))
        self._need_disk(capacity * self._row)
        self._file = tempfile.TemporaryFile(prefix="xcit-edge-pixels-")
        self._n = 0

    def _need_disk(self, needed: int) -> None:
        where = tempfile.gettempdir()
        free = shutil.disk_usage(where).free
        if free < needed:
            raise UsageError(f"decoding these images needs {_size(needed)} of temporary disk in {where}, which has "
                             f"{_size(free)} free: set TMPDIR to a larger disk, or use fewer images")

    def append(self, pixels: np.ndarray) -> None:
        if pixels.shape != self.image_shape or pixels.dtype != self.dtype:
            raise ValueError(f"spooled image {pixels.dtype} {pixels.shape}, expected uint8 {self.image_shape}")
        try:
            self._file.write(np.ascontiguousarray(pixels).tobytes())
        except OSError as e:  # ENOSPC once the disk fills after all
            raise UsageError(f"cannot spool decoded images to {tempfile.gettempdir()}: {first_line(e)}") from e
        self._n += 1

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    def __len__(self) -> int:
        return self._n

    def _rows(self, start: int, stop: int) -> np.ndarray:
        count = max(0, stop - start)
        self._file.flush()
        data = os.pread(self._file.fileno(), count * self._row, start * self._row)
        return np.frombuffer(data, np.uint8).reshape(count, *self.image_shape).copy()

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self._n)
            return self._rows(start, stop) if step == 1 else np.asarray(self)[key]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._n if key < 0 else 0)
            if not 0 <= i < self._n:
                raise IndexError(key)
            return self._rows(i, i + 1)[0]
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self._rows(0, self._n)
        return rows if dtype is None else rows.astype(dtype)


@dataclass
class CalibrationSet:
    """Decoded data plus where it came from; `digest` identifies it across runs."""

    pixels: np.ndarray | None  # uint8 (N, H, W, 3), resized and cropped
    floats: np.ndarray | None  # already preprocessed model inputs (float arrays given by the user)
    labels: np.ndarray | None
    names: list[str]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _images_digest: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def spooled(self) -> bool:
        return isinstance(self.pixels, SpooledPixels)

    @property
    def digest(self) -> str:
        return _digest(self.pixels, self.floats, self.labels)

    @property
    def images_digest(self) -> str:
        """The images alone (labels aside): what a reference and a validation run must share. Computed
        once (the images never change; a spooled set is read back from its file for it, a block at a time)."""
        if self._images_digest is None:
            self._images_digest = _digest(self.pixels, self.floats)
        return self._images_digest

    def batch_rows(self, multiple: int = 1) -> int:
        """Images per streamed batch: about BATCH_BYTES of float inputs, a multiple of `multiple`."""
        h, w = self._images().shape[1:3]
        return max(1, batch_images((h, w)) // multiple) * multiple

    def batches(self, pre: Preprocessing, baked: bool, rows: int) -> Iterator[np.ndarray]:
        """`model_ready` inputs `rows` images at a time, in order: what a run over a large set walks."""
        for start in range(0, len(self), rows):
            yield self.slice(start, start + rows).model_ready(pre, baked)

    def _images(self):
        return self.floats if self.floats is not None else self.pixels

    def model_ready(self, pre: Preprocessing, baked: bool) -> np.ndarray:
        """NHWC inputs: uint8 pixels for baked models, normalized float32 otherwise."""
        if self.floats is not None:
            if baked:
                raise UsageError(f"{self.source}: float arrays cannot feed a model that takes uint8 pixels; "
                                 "give images or a uint8 array")
            return self.floats
        assert self.pixels is not None
        if baked:
            return self.pixels
        return normalize(self.pixels, pre)

    def take(self, n: int) -> CalibrationSet:
        """The first `n` items (the order is deterministic: sorted names / array order), in memory."""
        return self.slice(0, n)

    def slice(self, start: int, stop: int) -> CalibrationSet:
        def cut(a):
            return None if a is None else a[start:stop]
        return CalibrationSet(cut(self.pixels), cut(self.floats), cut(self.labels), self.names[start:stop],
                              self.source, self.skipped)


def _digest(*arrays) -> str:
    """sha256 of each array's shape, dtype and C-order bytes, fed a block of rows at a time (the same
    digest for an in-memory array and for SpooledPixels holding the same images)."""
    h = hashlib.sha256()
    for arr in arrays:
        if arr is not None:
            h.update(str(arr.shape).encode() + arr.dtype.str.encode())
            step = max(1, BATCH_BYTES // max(1, arr.dtype.itemsize * int(np.prod(arr.shape[1:]))))
            for i in range(0, max(1, len(arr)), step):
                h.update(np.ascontiguousarray(arr[i:i + step]).tobytes())
    return h.hexdigest()


def normalize(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    x = pixels.astype(np.float32) * np.float32(pre.scale)
    return ((x - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)).astype(np.float32)


@cache
def _imagenet_table() -> tuple[tuple[str, str], ...]:
    rows = []
    for line in (data_dir("calibration") / "imagenet-1k-labels.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            _, synset, label = line.split("\t")
            rows.append((synset, label))
    return tuple(rows)


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names in timm/TF Hub output order."""
    return [label for _, label in _imagenet_table()]


def imagenet_synsets() -> list[str]:
    return [synset for synset, _ in _imagenet_table()]


def _resample(name: str):
    from PIL import Image

    return {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}.get(name, Image.Resampling.BICUBIC)


def resize_crop(img, pre: Preprocessing) -> np.ndarray:
    """timm's eval transform, to the pixel: shorter side to floor(size/crop_pct) (the longer one
    truncated in proportion, as torchvision's Resize), then a centre crop rounded as CenterCrop."""
    h, w = pre.size
    short = math.floor(max(h, w) / pre.crop_pct)
    iw, ih = img.size
    new = (short, int(short * ih / iw)) if iw <= ih else (int(short * iw / ih), short)
    img = to_rgb(img).resize(new, _resample(pre.interpolation))
    left, top = round((new[0] - w) / 2.0), round((new[1] - h) / 2.0)
    return np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.uint8)


def to_rgb(img):
    """8-bit RGB. 16-bit (and 32-bit integer) grayscale is scaled by 255/65535 first: `convert("RGB")`
    clips it instead, turning a 16-bit PNG white."""
    from PIL import Image

    if img.mode.startswith("I"):
        arr = np.asarray(img)
        if img.mode != "I" or arr.max(initial=0) > 255:  # mode "I" holding 8-bit values stays as is
            arr = np.round(arr.astype(np.float64).clip(0, 65535) / 257.0)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def decode_image(path: Path, pre: Preprocessing) -> np.ndarray:
    """One image as uint8 (H, W, 3); raises for anything unreadable or hostile (`_decode_all` skips it)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            pixels = resize_crop(img, pre)
    for w in caught:  # e.g. "Corrupt EXIF data" on an image that decodes: not the user's console's business
        log.debug("%s: %s", display_name(path), w.message)
    return pixels


def display_name(p: Path) -> str:
    """`p` as printable UTF-8: a name that is not UTF-8 (kept by Python as surrogates) would break
    every JSON, HTML and log writer downstream."""
    return str(p).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _class_index(name: str, class_names: list[str] | None) -> int | None:
    if name.isdigit():
        return int(name)
    if class_names and len(class_names) == 1000 and name in imagenet_synsets():
        return imagenet_synsets().index(name)
    if class_names and name in class_names:
        return class_names.index(name)
    return None


def _read_labels_file(path: Path, files: list[Path], class_names: list[str] | None) -> np.ndarray:
    """`name label` per line (label: index or class name), or one label per line in file order."""
    if not path.is_file():
        raise UsageError(f"labels file not found: {path}")
    lines = [ln.split() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip() and not ln.startswith("#")]
    if lines and all(len(parts) >= 2 for parts in lines):
        table = {parts[0]: parts[-1] for parts in lines}
        raw = [table.get(f.name, table.get(f.stem)) for f in files]
        missing = [f.name for f, r in zip(files, raw, strict=True) if r is None]
        if missing:
            raise UsageError(f"{path}: no label for {len(missing)} images (e.g. {missing[0]})")
    elif len(lines) == len(files):
        raw = [parts[0] for parts in lines]
    else:
        raise UsageError(f"{path}: {len(lines)} labels for {len(files)} images; "
                         "use 'name label' lines or one label per image in sorted file order")
    idx = [_class_index(r, class_names) for r in raw]
    if None in idx:
        bad = raw[idx.index(None)]
        raise UsageError(f"{path}: label {bad!r} is neither a class index nor one of the model's class names")
    return np.array(idx, np.int64)


def _folder_files(root: Path, class_names: list[str] | None,
                  shipped: bool = False) -> tuple[list[Path], list[int | None]]:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    direct = sorted(p for p in root.iterdir() if _is_image(p))
    if subdirs and not direct:
        files, labels = [], []
        for d in subdirs:
            cls = _class_index(d.name, class_names)
            for p in sorted(q for q in d.rglob("*") if _is_image(q)):
                files.append(p)
                labels.append(cls)
        if any(lab is None for lab in labels):
            # the shipped sample's synthetic classes only map to the fixture: no news for other models
            (log.info if shipped else log.warning)("%s: class folders do not map to the model's classes; "
                                                   "labels ignored", root)
            labels = [None] * len(files)
        return files, labels
    files = sorted(q for q in root.rglob("*") if _is_image(q))
    return files, [None] * len(files)


def _subset_files(definition: Path, root: Path) -> tuple[list[Path], list[int | None]]:
    if not root.is_dir():
        raise UsageError(f"subset root {root} is not a directory")
    wanted: list[tuple[str, int]] = []
    for line in definition.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, label = line.split()[:2]
            wanted.append((name, int(label)))
    index = {p.name: p for p in root.rglob("*") if _is_image(p)}
    missing = [n for n, _ in wanted if n not in index]
    if len(missing) == len(wanted):
        raise UsageError(f"{root}: none of the {len(wanted)} images of subset {definition.stem} found")
    if missing:
        log.warning("%s: %d of %d subset images missing (e.g. %s)", root, len(missing), len(wanted), missing[0])
    return [index[n] for n, _ in wanted if n in index], [lab for n, lab in wanted if n in index]


def subset_definitions() -> dict[str, Path]:
    return {p.stem: p for p in sorted(data_dir("calibration").glob("*.txt"))}


def spools(images: int, input_hw: tuple[int, int]) -> bool:
    """Whether `images` decoded at `input_hw` go to a temp file (SpooledPixels) rather than memory."""
    return images * input_hw[0] * input_hw[1] * 3 > SPOOL_BYTES


def batch_images(input_hw: tuple[int, int]) -> int:
    """Images per streamed batch at `input_hw` (BATCH_BYTES of float32 inputs; at least one)."""
    return max(1, BATCH_BYTES // (4 * 3 * input_hw[0] * input_hw[1]))


def _decode_all(files: list[Path], labels: list[int | None], pre: Preprocessing, source: str,
                progress: Progress | None) -> CalibrationSet:
    spool = SpooledPixels((*pre.size, 3), len(files)) if spools(len(files), pre.size) else None
    pixels, names, kept, skipped = [], [], [], []
    for i, (p, lab) in enumerate(zip(files, labels, strict=True)):
        try:
            image = decode_image(p, pre)
        except Exception as e:  # noqa: BLE001 - an untrusted file Pillow (or a plugin bug) rejects: skip it
            skipped.append((display_name(p), first_line(e)))
        else:
            if spool is not None:
                spool.append(image)  # a full disk is the run's error, not this image's
            else:
                pixels.append(image)
            names.append(display_name(p))
            kept.append(lab)
        if progress:
            progress(i + 1, len(files))
    if skipped:
        shown = ", ".join(Path(n).name for n, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        log.warning("%s: skipped %d unreadable image(s): %s", source, len(skipped), shown)
    if not names:
        raise UsageError(f"{source}: no usable images ({len(files)} files, {len(skipped)} unreadable)")
    lab = None if any(k is None for k in kept) else np.array(kept, np.int64)
    return CalibrationSet(spool if spool is not None else np.stack(pixels), None, lab, names, source, skipped)


def _load_array(path: Path, pre: Preprocessing) -> CalibrationSet:
    """A user's .npy/.npz (untrusted bytes: no pickle; whatever numpy or zipfile raise on them is one clear error)."""
    if path.stat().st_size > MAX_ARRAY_BYTES:
        raise UsageError(f"{path}: larger than {MAX_ARRAY_BYTES >> 30} GiB")
    try:
        return _array_set(path, pre)
    except UsageError:
        raise
    except Exception as e:  # BadZipFile, ValueError, TypeError, MemoryError, ... of a bad file
        raise UsageError(f"{path}: unreadable array file ({first_line(e, 200)})") from e


def _array_set(path: Path, pre: Preprocessing) -> CalibrationSet:
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "images" not in data.files:
                raise UsageError(f"{path}: .npz needs an 'images' array (has: {', '.join(data.files)})")
            arr, labels = data["images"], data["labels"] if "labels" in data.files else None
    else:
        arr, labels = data, None
    h, w = pre.size
    if arr.ndim != 4 or len(arr) == 0 or arr.dtype.kind not in "uif":
        raise UsageError(f"{path}: expected a non-empty (N, H, W, 3) array of numbers, got {arr.dtype} {arr.shape}")
    names = [f"{path.name}[{i}]" for i in range(len(arr))]
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(arr):
            raise UsageError(f"{path}: {len(labels)} labels for {len(arr)} images")
    if arr.dtype == np.uint8:
        from PIL import Image

        if arr.shape[-1] != 3:
            raise UsageError(f"{path}: uint8 images must be NHWC RGB, got shape {arr.shape}")
        pix = arr if arr.shape[1:3] == (h, w) else np.stack([resize_crop(Image.fromarray(a), pre) for a in arr])
        return CalibrationSet(pix, None, labels, names, str(path))
    if arr.shape[1:] != (h, w, 3):
        raise UsageError(f"{path}: float inputs must be preprocessed NHWC {(h, w, 3)}, got {arr.shape[1:]}")
    return CalibrationSet(None, arr.astype(np.float32), labels, names, str(path))


def load_calibration(data: str | os.PathLike, pre: Preprocessing, *, class_names: list[str] | None = None,
                     labels_file: Path | None = None, limit: int | None = None,
                     progress: Progress | None = None,
                     before_decode: Callable[[int, bool], None] | None = None) -> CalibrationSet:
    """Resolve DATA (see the module doc) and decode up to `limit` items for preprocessing `pre`;
    `before_decode(n, spooled)` hears how many images are about to be decoded and whether they will be
    spooled to disk (a memory check may refuse)."""
    text = str(data)
    subsets = subset_definitions()
    if text == "sample":
        files, labels = _folder_files(data_dir("calibration") / "sample", class_names, shipped=True)
        source = "shipped sample"
    elif "@" in text and text.split("@", 1)[0] in subsets:
        name, root = text.split("@", 1)
        files, labels = _subset_files(subsets[name], Path(root))
        source = f"subset {name} of {root}"
    else:
        path = Path(text)
        if not path.exists():
            raise UsageError(f"calibration data not found: {path} (known: sample, a folder, .npy/.npz, "
                             f"{', '.join(f'{s}@DIR' for s in subsets)})")
        if path.is_file():
            if path.suffix not in (".npy", ".npz"):
                raise UsageError(f"{path}: calibration files must be .npy or .npz (or give a folder of images)")
            cal = _load_array(path, pre)
            cal = cal.take(limit) if limit else cal
            if before_decode:  # the array is in memory; its float copies are not yet
                before_decode(len(cal), False)
            return cal
        files, labels = _folder_files(path, class_names)
        source = str(path)
    if labels_file is not None:
        labels = list(_read_labels_file(Path(labels_file), files, class_names))
    if not files:
        raise UsageError(f"{source}: no images found")
    if limit:
        files, labels = _spread(files, labels, limit)
    if before_decode:
        before_decode(len(files), spools(len(files), pre.size))
    return _decode_all(files, labels, pre, source, progress)


def _spread(files: list[Path], labels: list, limit: int) -> tuple[list[Path], list]:
    """At most `limit` files taken evenly over the sorted list, so every class folder is represented."""
    if len(files) <= limit:
        return files, labels
    idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
    return [files[i] for i in idx], [labels[i] for i in idx]
