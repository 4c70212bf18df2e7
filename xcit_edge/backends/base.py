"""What every target backend provides: the `Backend` protocol, its quantization modes and its result.

A backend is one package under `xcit_edge/backends/` (`tflite/`, `onnx/`, `openvino/`) whose module
implements `Backend` with module-level names (a module satisfies a protocol: PEP 544) and registers
itself at its end with `xcit_edge.backends.register`. Nothing outside `backends/` names a runtime:
targets, convert, validate, bench and the child-process runs reach a backend through the registry by
the `backend` field of a target spec. Adding a runtime is one new package plus its TOML target files
(docs/ARCHITECTURE.md has the worked example).

Backends import their runtime lazily, inside the functions that need it: registering all of them
costs no TensorFlow or runtime import, so the CLI can check a target name before anything heavy loads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class QuantMode:
    """A value of a target's `quantization.mode` that a backend accepts.

    `integer`: integer arithmetic in the artifact (its checks are statistical, calibration images are
    decoded). `calibrated`: activation ranges measured on calibration images (not per input at run time).
    """

    name: str
    integer: bool = False
    calibrated: bool = False


FLOAT = QuantMode("none")

# (images done, images in the pass), and the name of the step a conversion is in: set by `convert` around
# each target's conversion
_CALIBRATION_PROGRESS: ContextVar[Callable[[int, int], None] | None] = ContextVar("calibration_progress",
                                                                                 default=None)
_STEP: ContextVar[Callable[[str], None] | None] = ContextVar("conversion_step", default=None)


@contextmanager
def conversion_progress(images: Callable[[int, int], None] | None = None,
                        steps: Callable[[str], None] | None = None):
    """While converting: `images(done, total)` after each calibration image a quantizer runs (the long
    step of an int8 target of a large model: minutes, so a person sees it move and how long is left), and
    `steps(name)` when the conversion starts a step (`step`)."""
    tokens = _CALIBRATION_PROGRESS.set(images), _STEP.set(steps)
    try:
        yield
    finally:
        _STEP.reset(tokens[1])
        _CALIBRATION_PROGRESS.reset(tokens[0])


def step(name: str) -> None:
    """Say which step a conversion is starting ("tf2onnx", "ONNX rewrites", "checking ..."): one of a large
    model takes minutes, and without it a target is one silent line."""
    report = _STEP.get()
    if report:
        report(name)


class Calibration:
    """Calibration inputs a quantizer iterates (ONNX Runtime's reader, TFLite's representative dataset,
    NNCF's dataset), reporting each image of each pass to `calibration_progress`'s callback."""

    def __init__(self, items):
        self.items = items
        self._report = _CALIBRATION_PROGRESS.get()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator:
        total = len(self.items)
        for i, item in enumerate(self.items):
            yield item
            if self._report:
                self._report(i + 1, total)


@dataclass
class Conversion:
    """What a backend produced: files (primary first), what stayed in float, anything else to record.

    `details` may carry `xca_blocks` (fused XCA blocks read back from the artifact) and `xca_form`
    (how they appear: graph, function, inlined); `convert` moves those two into the manifest's `xca`.
    """

    files: list[str]
    kept_float: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


class Backend(Protocol):
    """A runtime family: converts the prepared graph to its format, loads and runs what it wrote.

    Attributes:
        NAME: the `backend` value of target specs (`targets/*.toml`).
        RUNTIME_MODULE: the runtime's import name (bench imports it alone to measure its baseline memory).
        DISTRIBUTIONS: pip distributions whose versions an artifact records, the runtime's first.
        MODES: the quantization modes its target specs may name.
        RUN_OPTIONS: spec options a `convert` run may switch on for every target of this backend
            (ConvertOptions fields of the same name, e.g. `inline_functions`).
        CONVERT_MEMORY_FACTOR: peak memory growth of converting to it, per SavedModel byte (the
            converter's own copies of the graph and weights; `util/memory.py` turns it into the estimate).
        convert_within_drop: None, or the backend's own accuracy-controlled quantization
            (`--max-drop`; precision.py falls back to relaxing `quantized_layers` otherwise).
    """

    NAME: str
    RUNTIME_MODULE: str
    DISTRIBUTIONS: tuple[str, ...]
    MODES: tuple[QuantMode, ...]
    RUN_OPTIONS: tuple[str, ...]
    CONVERT_MEMORY_FACTOR: float
    convert_within_drop: Callable[..., Conversion] | None

    def convert(self, graph: Any, spec: Any, calib: np.ndarray | None, workdir: Path) -> Conversion:
        """Write the artifact's files for `spec` into `workdir` (a temp directory the caller renames).

        Args:
            graph: the PreparedGraph (frozen, rewritten TF graph) every backend starts from.
            spec: the TargetSpec (backend settings, quantization, tolerances).
            calib: model-ready calibration inputs for integer modes, None for float ones.
            workdir: where to write; the caller adds labels and the manifest.
        Returns:
            The Conversion: files written (primary first), layers kept in float, details to record.
        Raises:
            ConversionError: the runtime's converter or quantizer failed (this target fails, others go on).
            UsageError: the spec needs calibration data that was not given.
        """

    def load(self, path: Path, spec: Any = None, threads: int | None = None) -> Any:
        """A session for the artifact file `path` with the options `validate` uses (`threads`: None for the
        runtime's default)."""

    def run(self, session: Any, x: np.ndarray) -> np.ndarray:
        """Float32 outputs of `session` for the batch `x` (in the artifact's input contract)."""

    def block_outputs(self, path: Path, spec: Any, x: np.ndarray) -> dict[int, np.ndarray]:
        """The output of each fused XCA block on `x`, by block index (validate localizes a failure with it)."""

    def run_defaults(self, path: Path) -> dict:
        """Load `path` with the runtime's default options, as an app would, and run it once on zeros; returns
        what the runtime reported about the model (runs in a child process: `xcit_edge.artifact.smoke`)."""

    def quantized_layers(self, graph: Any, spec: Any) -> list[str]:
        """The layers `spec` quantizes, in graph order, that could be kept in float (empty: no selection)."""

    def describe(self, path: Path, graph: Any) -> dict | None:
        """Write in-file metadata for apps into the artifact at `path` (TFLite Metadata); None when the format
        has none. Returns what was written, for the manifest."""


# What `register` checks a backend module for: every name the protocol declares (read from it, not listed twice)
REQUIRED = tuple(dict.fromkeys(n for n in (*Backend.__annotations__, *vars(Backend)) if not n.startswith("_")))


def zeros_input(shape: Iterable, dtype) -> np.ndarray:
    """A zero input of `shape`; dynamic dimensions (None, -1, a name) become 1."""
    dims = [int(d) if isinstance(d, int | np.integer) and int(d) > 0 else 1 for d in shape]
    return np.zeros(dims, dtype=dtype)


def op_counts(op_types: Iterable[str]) -> list[str]:
    """`["OP xN", ...]` in name order: how manifests list the ops a model kept in float."""
    return [f"{k} x{v}" for k, v in sorted(Counter(op_types).items())]
