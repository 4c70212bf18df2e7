"""Artifacts on disk: one directory per target with the model file(s), labels and `manifest.json`.

The manifest says everything needed to trust or reproduce the artifact: source model hash,
target spec, tool and library versions, I/O contract, preprocessing, labels, file hashes
and sizes, conversion time, what stayed in float and how the artifact compared with the
source right after conversion.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

from xcit_edge import __version__
from xcit_edge.backends import all_backends
from xcit_edge.errors import UsageError
from xcit_edge.fsutil import read_json_document, sha256_file
from xcit_edge.preprocessing import LAYOUTS, Preprocessing
from xcit_edge.util.versions import distribution_versions

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "xcit-edge.artifact/1"
LABELS_FILE = "labels.txt"
_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "keras", "numpy")  # and every backend's DISTRIBUTIONS


def library_versions() -> dict[str, str]:
    """Python and the installed libraries a conversion used (the backends' own distributions included)."""
    dists = [*_DISTRIBUTIONS, *(d for b in all_backends().values() for d in b.DISTRIBUTIONS)]
    installed = {k: v for k, v in distribution_versions(dists).items() if v is not None}
    return {"python": platform.python_version(), **installed}


def file_entries(workdir: Path, files: list[str]) -> list[dict]:
    return [{"file": f, "sha256": sha256_file(workdir / f), "bytes": (workdir / f).stat().st_size} for f in files]


def write_manifest(workdir: Path, manifest: dict) -> None:
    doc = {"format": MANIFEST_FORMAT, "tool": f"xcit-edge {__version__}",
           "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **manifest}
    (workdir / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_manifest(artifact_dir: Path) -> dict:
    """An artifact's manifest (untrusted input: size-capped, format-checked, and every field the commands
    read present with its type, so a hand-edited manifest is one clear error, not a KeyError later)."""
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise UsageError(f"{artifact_dir}: not an xcit-edge artifact (no {MANIFEST})")
    doc = read_json_document(path, MANIFEST_FORMAT, "an xcit-edge manifest", 4 << 20)
    _check_fields(doc, path)
    return doc


def _field(obj: object, key: str, kind: type, where: str, path: Path):
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{path}: manifest field {where}{key} is missing or not {kind.__name__}")
    return value


def _check_fields(doc: dict, path: Path) -> None:
    for key in ("target", "source", "io", "preprocessing", "artifact"):
        _field(doc, key, dict, "", path)
    _field(doc["target"], "name", str, "target.", path)
    for part in ("input", "output"):
        shape = _field(_field(doc["io"], part, dict, "io.", path), "shape", list, f"io.{part}.", path)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise UsageError(f"{path}: manifest field io.{part}.shape is not a list of integers")
    layout = doc["io"]["input"].get("layout", "NHWC")
    if layout not in LAYOUTS:
        raise UsageError(f"{path}: manifest field io.input.layout {str(layout)[:20]!r} is none of {', '.join(LAYOUTS)}")
    for entry in _field(doc["artifact"], "files", list, "artifact.", path):
        for key, kind in (("file", str), ("sha256", str), ("bytes", int)):
            _field(entry, key, kind, "artifact.files[].", path)
    try:
        Preprocessing.from_dict(doc["preprocessing"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise UsageError(f"{path}: manifest field preprocessing is malformed ({e})") from e
