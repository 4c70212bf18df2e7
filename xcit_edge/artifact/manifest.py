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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xcit_edge import __version__
from xcit_edge.backends import all_backends
from xcit_edge.data.preprocessing import Preprocessing
from xcit_edge.errors import UsageError
from xcit_edge.records import (
    CalibrationRecord,
    CheckRecord,
    Fields,
    FileEntry,
    IOContract,
    LabelsRecord,
    MaxDropRecord,
    RecordError,
    SourceInfo,
    XcaRecord,
)
from xcit_edge.util.fs import read_json_document, sha256_file
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


def file_entries(workdir: Path, files: list[str]) -> tuple[FileEntry, ...]:
    """The manifest's entries for `files` in `workdir`: hashed and sized now."""
    return tuple(FileEntry(f, sha256_file(workdir / f), (workdir / f).stat().st_size) for f in files)


@dataclass(frozen=True)
class Manifest:
    """Everything recorded about one artifact (`manifest.json`, format xcit-edge.artifact/1).

    `target` is the spec as it was when converting (information: `validate` takes tolerances from the
    installed spec of the same name, never from the editable manifest). `backend_details`, `libraries`,
    `runtime_defaults`, `app_metadata` and `rewrites` are what the backend, the installation and the runtime
    reported: free-form by nature, kept as JSON objects.
    """

    target: Mapping[str, Any]
    source: SourceInfo
    io: IOContract
    preprocessing: Preprocessing
    preprocessing_origin: str
    baked: bool
    files: tuple[FileEntry, ...]
    check: CheckRecord | None = None
    xca: XcaRecord | None = None
    kept_float: tuple[str, ...] = ()
    conversion_seconds: float = 0.0
    max_drop: MaxDropRecord | None = None
    labels: LabelsRecord | None = None
    calibration: CalibrationRecord | None = None
    libraries: Mapping[str, str] = field(default_factory=dict)
    rewrites: Mapping[str, Any] = field(default_factory=dict)
    backend_details: Mapping[str, Any] = field(default_factory=dict)
    runtime_defaults: Mapping[str, Any] | None = None
    app_metadata: Mapping[str, Any] | None = None
    tool: str = ""
    created: str = ""

    @property
    def target_name(self) -> str:
        return self.target["name"]

    @property
    def file_bytes(self) -> int:
        return sum(e.bytes for e in self.files)

    def to_dict(self) -> dict:
        def opt(record):
            return None if record is None else record.to_dict()

        return {
            "format": MANIFEST_FORMAT, "tool": self.tool, "created": self.created,
            "target": dict(self.target), "source": self.source.to_dict(), "libraries": dict(self.libraries),
            "io": self.io.to_dict(),
            "preprocessing": {**self.preprocessing.to_dict(), "origin": self.preprocessing_origin,
                              "baked_into_model": self.baked},
            "labels": opt(self.labels), "artifact": {"files": [e.to_dict() for e in self.files]},
            "tflite_metadata": None if self.app_metadata is None else dict(self.app_metadata),
            "conversion_seconds": self.conversion_seconds, "kept_float": list(self.kept_float),
            "max_drop": opt(self.max_drop), "rewrites": dict(self.rewrites), "xca": opt(self.xca),
            "backend_details": dict(self.backend_details), "runtime_defaults": self.runtime_defaults,
            "calibration": opt(self.calibration), "check": opt(self.check),
        }

    @classmethod
    def from_dict(cls, doc: dict, where: str) -> Manifest:
        """Read and check every field (untrusted input); RecordError names the first bad one."""
        f = Fields(doc, where)
        target = f.mapping("target")
        Fields(target, where, "target.").string("name")
        pre_doc = f.mapping("preprocessing")
        try:
            pre = Preprocessing.from_dict(pre_doc)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise RecordError(f"{where}: manifest field preprocessing is malformed ({e})") from e
        pre_fields = f.sub("preprocessing")
        files = f.sub("artifact").items("files")

        def opt(key: str, record):
            return None if doc.get(key) is None else record.from_dict(f.sub(key))

        return cls(
            target=target, source=SourceInfo.from_dict(f.sub("source")), io=IOContract.from_dict(f.sub("io")),
            preprocessing=pre, preprocessing_origin=pre_fields.text("origin"),
            baked=bool(pre_fields.boolean("baked_into_model", optional=True)),
            files=tuple(FileEntry.from_dict(e, where) for e in files),
            check=opt("check", CheckRecord), xca=opt("xca", XcaRecord),
            kept_float=f.strings("kept_float") if doc.get("kept_float") is not None else (),
            conversion_seconds=f.number("conversion_seconds", optional=True) or 0.0,
            max_drop=opt("max_drop", MaxDropRecord), labels=opt("labels", LabelsRecord),
            calibration=opt("calibration", CalibrationRecord),
            libraries={str(k): str(v) for k, v in (f.mapping("libraries", optional=True) or {}).items()},
            rewrites=f.mapping("rewrites", optional=True) or {},
            backend_details=f.mapping("backend_details", optional=True) or {},
            runtime_defaults=f.mapping("runtime_defaults", optional=True),
            app_metadata=f.mapping("tflite_metadata", optional=True),
            tool=f.text("tool"), created=f.text("created"),
        )


def write_manifest(workdir: Path, manifest: Manifest) -> Manifest:
    """Write `manifest` (stamped with this tool's version and the time) into `workdir`; returns what was written."""
    stamped = replace(manifest, tool=f"xcit-edge {__version__}",
                      created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    (workdir / MANIFEST).write_text(json.dumps(stamped.to_dict(), indent=2) + "\n", encoding="utf-8")
    return stamped


def read_manifest(artifact_dir: Path) -> Manifest:
    """An artifact's manifest, read as untrusted input: size-capped, format-checked, every field typed.

    Raises:
        UsageError: no manifest, not our format, too large, or a field missing or of the wrong type.
    """
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise UsageError(f"{artifact_dir}: not an xcit-edge artifact (no {MANIFEST})")
    doc = read_json_document(path, MANIFEST_FORMAT, "an xcit-edge manifest", 4 << 20)
    return Manifest.from_dict(doc, str(path))
