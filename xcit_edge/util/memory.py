"""Will a run fit in memory? Said before the work starts, instead of the kernel's OOM kill later.

The estimate is a linear model of peak resident memory, per command, fitted to measurements
(`benchmarks/convert.py` reruns `convert` of every target and prints measured peak / estimate;
`benchmarks/memory.py` measures the per-image terms):

    peak ≈ runtimes + factor × SavedModel bytes + image factor × float input bytes × images held
           + what stays loaded (artifacts in their runtimes, outputs kept per image)

The model factor is the command's: `convert` takes the largest of its targets' backends (each
backend's CONVERT_MEMORY_FACTOR: its converter parses its own copy of the graph and its weights,
TFLite's MLIR converter several), `reference` and `validate --source` REFERENCE_FACTOR (TF's loaded variables and
the frozen graph). A set spooled to disk holds one batch of images (`data/calibration.py`). The limit
is `--max-memory`, else what the machine can give now (MemAvailable, capped by a cgroup limit:
containers and CI runners).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from xcit_edge.errors import UsageError

GIB = 1 << 30
RUNTIMES_BYTES = int(1.3 * GIB)  # TensorFlow, ONNX Runtime, OpenVINO, LiteRT, NNCF imported and initialized
# each further backend converted in the same process: what the earlier converters leave behind (heap, arenas;
# medium_24's nine targets in one `convert` peaked 1.1 GB above its worst single target, 3.4x the model)
EXTRA_BACKEND_FACTOR = 2.0
REFERENCE_FACTOR = 4.0  # reference, validate --source: the loaded SavedModel, its frozen graph, the serving run
# per decoded image, in float32 inputs (benchmarks/memory.py measures the slopes: validate 4.6, reference 3.6;
# convert's quantizer calibration stays under 4.5 on nano): decode, normalize, the runtimes' copies
IMAGE_FACTOR = 4.5
REFERENCE_IMAGE_FACTOR = 3.6
OUTPUT_BYTES = 4 * 1000  # one output row kept per image: 1000 float32 logits (XCiT features are <= 512 wide)
_CGROUP_FILES = (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes"))  # v2, v1
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": GIB, "T": 1 << 40}


@dataclass(frozen=True)
class Estimate:
    """Peak resident memory of a run, by part (bytes)."""

    runtimes: int
    model: int
    calibration: int
    images: int

    @property
    def total(self) -> int:
        return self.runtimes + self.model + self.calibration

    def describe(self) -> str:
        parts = f"runtimes {gib(self.runtimes)}, model {gib(self.model)}"
        if self.images:
            parts += f", {self.images} calibration images {gib(self.calibration)}"
        return f"about {gib(self.total)} ({parts})"


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def parse_size(text: str) -> int:
    """'8G', '8GiB', '512M', '1.5 GB' or plain bytes -> bytes (binary units: what `free -h` shows)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not m or float(m[1]) <= 0:
        raise UsageError(f"--max-memory {text!r}: give a size such as 8G, 512M or 1.5GiB")
    return int(float(m[1]) * _UNITS[m[2]])


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


def convert_factor(backend_factors: Iterable[float]) -> float:
    """The model factor of a `convert` in one process to backends with these CONVERT_MEMORY_FACTORs (one
    per distinct backend): the largest, plus EXTRA_BACKEND_FACTOR for each other backend."""
    found = list(backend_factors)
    return max(found) + EXTRA_BACKEND_FACTOR * (len(found) - 1)


def estimate(model_bytes: int, input_hw: tuple[int, int], images: int, image_factor: float = IMAGE_FACTOR,
             loaded_bytes: int = 0, model_factor: float = REFERENCE_FACTOR) -> Estimate:
    """Peak of a run over a SavedModel of `model_bytes` (0: none) with `model_factor` (the command's),
    `images` decoded at `input_hw`, plus `loaded_bytes` held as they are (artifacts in their runtimes)."""
    per_image = image_factor * input_hw[0] * input_hw[1] * 3 * 4
    return Estimate(RUNTIMES_BYTES, int(model_factor * model_bytes) + loaded_bytes, int(per_image * images), images)


def available_memory() -> tuple[int | None, str]:
    """The most this process can grow to: what it holds now plus MemAvailable, or less under a cgroup limit
    (the estimate is of the whole process's peak, so what it already holds counts on both sides)."""
    found: list[tuple[int, str]] = []
    own = _own_rss()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((own + int(line.split()[1]) * 1024, "available memory"))
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in _CGROUP_FILES:
        limit = _cgroup_value(limit_file)
        if limit is not None and limit < 1 << 60:
            found.append((own + max(0, limit - (_cgroup_value(usage_file) or 0)), "the cgroup memory limit"))
            break
    return min(found) if found else (None, "unknown")


def _own_rss() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _cgroup_value(name: str) -> int | None:
    for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")):
        try:
            text = (base / name).read_text().strip()
        except OSError:
            continue
        return None if text == "max" else int(text) if text.isdigit() else None
    return None


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's `malloc_trim`; nothing elsewhere):
    between targets, so one target's freed copies of the model are not part of the next one's peak."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def check_model(model_bytes: int, max_memory: int | None, model_factor: float = REFERENCE_FACTOR) -> None:
    """Before a SavedModel of `model_bytes` is loaded: the runtimes and the model alone must fit."""
    check_fits(estimate(model_bytes, (0, 0), 0, model_factor=model_factor), max_memory)


def image_budget(model_bytes: int, input_hw: tuple[int, int], max_memory: int | None,
                 image_factor: float = IMAGE_FACTOR, loaded_bytes: int = 0, streaming: bool = False,
                 outputs: int = 0, model_factor: float = REFERENCE_FACTOR):
    """A `load_calibration(before_decode=...)` hook: checks the run with the number of images about to be
    decoded, before any is. `streaming`: the run walks the set in batches, so a set spooled to disk holds
    one batch of images in memory (`calibration.batch_images`); `outputs`: results kept for every image
    whatever streams (a reference's and each artifact's outputs, OUTPUT_BYTES each)."""
    from xcit_edge.data.calibration import batch_images

    def check(images: int, spooled: bool = False) -> None:
        held = min(images, batch_images(input_hw)) if streaming and spooled else images
        est = estimate(model_bytes, input_hw, held, image_factor, loaded_bytes + outputs * OUTPUT_BYTES * images,
                       model_factor)
        check_fits(est, max_memory)
    return check


def check_fits(est: Estimate, max_memory: int | None) -> None:
    """Refuse, with the estimate, a run that would not fit under `max_memory` (or what is available)."""
    limit, what = (max_memory, "--max-memory") if max_memory else available_memory()
    if limit is None or est.total <= limit:
        return
    per_image = est.calibration / est.images if est.images else 0
    fewer = math.floor((limit - est.runtimes - est.model) / per_image) if per_image else 0
    hint = (f"use {fewer} images or fewer (--calibration-images / --max-images), or "
            if 0 < fewer < est.images else "") + \
        "run it on a machine with more memory" + ("" if max_memory else " (or set --max-memory if this is wrong)")
    raise UsageError(f"this run needs {est.describe()}, more than {what} ({gib(limit)}): {hint}")
