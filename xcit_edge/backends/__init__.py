"""Target backends: one module per runtime family, each with the same small interface.

    convert(graph: PreparedGraph, spec: TargetSpec, calib: np.ndarray | None, workdir: Path) -> Conversion
    load(path: Path, spec: TargetSpec) -> a runnable session
    run(session, x: np.ndarray) -> np.ndarray      (batch in, float32 outputs out)
    block_outputs(path: Path, spec, x) -> {block index: float32 output of that fused XCA block}
                                                   (`validate` localizes a failure with it)

`convert` writes its files into `workdir` (the artifact's temp directory); the caller adds
the manifest and renames the directory into place.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType


@dataclass
class Conversion:
    """What a backend produced: files (primary first), what stayed in float, anything else to record."""

    files: list[str]
    kept_float: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


def backend(name: str) -> ModuleType:
    """The backend module (imported lazily: each pulls in a heavy runtime)."""
    return importlib.import_module(f"xcit_edge.backends.{name}")
