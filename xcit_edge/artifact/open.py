"""Opening an artifact directory someone else may have made: every step treats it as untrusted input.

The manifest is read typed and size-capped (`artifact.manifest`), the files it lists must be plain names
inside the directory and match their sha256, the target's tolerances come from the installed spec of the
same name (never from the editable manifest), and the model is first run once with its runtime's default
options in a child process (`artifact.smoke`), so a runtime that aborts natively on a file does not take
`validate` or `bench` with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xcit_edge.artifact.manifest import Manifest, read_manifest
from xcit_edge.artifact.smoke import smoke
from xcit_edge.backends import Backend, backend
from xcit_edge.data.calibration import CalibrationSet
from xcit_edge.data.preprocessing import Preprocessing, to_layout
from xcit_edge.errors import UsageError, first_line
from xcit_edge.reference import REFERENCE_FILE
from xcit_edge.targets import TargetSpec, all_targets
from xcit_edge.util.fs import sha256_file

log = logging.getLogger(__name__)

@dataclass
class OpenArtifact:
    """An artifact directory whose files match its manifest, loaded in its runtime."""

    path: Path
    manifest: Manifest
    spec: TargetSpec
    module: Backend
    session: object = None
    broken: str | None = None  # why its runtime with default options cannot run it (a child process found out)

    def load(self, threads: int | None = None):
        """A runtime session of the artifact (threads: the runtime's thread count, None for its default);
        a model the runtime refuses is bad input (one line, exit 2)."""
        try:
            return self.module.load(self.path / self.spec.file, self.spec, threads)
        except Exception as e:  # each runtime has its own exception types for a model it refuses
            raise UsageError(f"{self.path}: {self.spec.backend} cannot load {self.spec.file} ({first_line(e)})") from e

    @property
    def file_bytes(self) -> int:
        """What the artifact's files weigh (the manifest's sizes: open_artifact checked them by hash)."""
        return self.manifest.file_bytes

    @property
    def kind(self) -> str:
        return self.manifest.io.output_kind

    def inputs(self, cal: CalibrationSet, pre: Preprocessing) -> np.ndarray:
        """The calibration images in this artifact's input contract (baked uint8, or float NHWC/NCHW)."""
        return self._contract(cal.model_ready(pre, self.manifest.baked))

    def input_batches(self, cal: CalibrationSet, pre: Preprocessing) -> Iterator[np.ndarray]:
        """`inputs`, a batch at a time (a spooled set is never in memory whole)."""
        for x in cal.batches(pre, self.manifest.baked, cal.batch_rows()):
            yield self._contract(x)

    def _contract(self, x: np.ndarray) -> np.ndarray:
        return x if self.manifest.baked else to_layout(x, self.manifest.io.input.layout or "NHWC")



def shipped_spec(manifest: Manifest, where: Path) -> TargetSpec:
    """The shipped spec of the manifest's target: tolerances come from the package, never from the
    (untrusted, editable) manifest."""
    name = manifest.target_name
    known = all_targets()
    if name not in known:
        raise UsageError(f"{where}: manifest names an unknown target {name!r} (known: {', '.join(known)})")
    return known[name]


def _check_files(where: Path, manifest: Manifest) -> None:
    if not manifest.files:
        raise UsageError(f"{where}: manifest lists no files")
    for e in manifest.files:
        name = e.file
        if not name or Path(name).name != name or name in (".", ".."):
            raise UsageError(f"{where}: manifest lists a file outside the artifact ({name!r})")
        if not (where / name).is_file():
            raise UsageError(f"{where}: {name} is missing")
        if sha256_file(where / name) != e.sha256:
            raise UsageError(f"{where}: {name} does not match its manifest (sha256 differs): corrupt or modified")


def artifact_paths(paths: list[Path], command: str) -> list[Path]:
    """The artifact directories among PATHS: `OUT/*` after `convert --reference-device` names the
    reference file too, which is skipped with a warning. None left is bad input."""
    refs = [p for p in paths if Path(p).is_file() and Path(p).name == REFERENCE_FILE]
    for p in refs:
        log.warning("%s is a reference file, not an artifact: skipped", p)
    paths = [p for p in paths if p not in refs]
    if not paths:
        raise UsageError(f"no artifacts to {command}")
    return paths


def require_artifact(path: Path) -> None:
    """Refuse a path that is not there (UsageError); cheap and TensorFlow-free, so the CLI calls it first."""
    if not Path(path).exists():
        raise UsageError(f"artifact not found: {path}")


def open_artifact(path: Path, threads: int | None = None, load: bool = True, run_check: bool = True) -> OpenArtifact:
    """Open an artifact someone else may have made: manifest, file hashes, a child-process run, its runtime.

    Args:
        path: the artifact directory, or its model file.
        threads: the runtime's thread count for the session (None: the runtime's default).
        load: load the session (bench loads later, once per thread count).
        run_check: first run the file once with the runtime's *default* options in a child process.
    Returns:
        The OpenArtifact; `broken` set (and nothing loaded) when the runtime died on the file (a signal, a hang).
    Raises:
        UsageError: no such path, no or a malformed manifest, an unknown target, a file missing, outside the
            directory or not matching its hash, or a file the runtime refuses (exit 2).
    """
    path = Path(path)
    require_artifact(path)
    where = path if path.is_dir() else path.parent
    manifest = read_manifest(where)
    spec = shipped_spec(manifest, where)
    _check_files(where, manifest)
    art = OpenArtifact(where, manifest, spec, backend(spec.backend))
    # first in a child process with the runtime's defaults, as an app loads it: a runtime that aborts natively
    # on a file (LiteRT's double free) would otherwise take this whole process with it
    res = smoke(spec.backend, where / spec.file) if run_check else None
    if res is not None and not res.ok and not res.died:  # the runtime refused the file: bad input, as in load()
        raise UsageError(f"{where}: {spec.backend} cannot load {spec.file} with its default options ({res.why})")
    if res is not None and not res.ok:  # it took the child process with it: this artifact's verdict
        art.broken = res.why
        log.error("%s: %s's runtime with default options cannot run it (%s)", where, spec.backend, res.why)
    elif load:
        art.session = art.load(threads)
    return art
