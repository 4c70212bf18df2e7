"""`xcit-edge bench`: latency, throughput, peak memory and size of artifacts, each in its own runtime.

Method (what makes two numbers from one run comparable):
- every candidate is loaded with the same thread count and fed the same seeded input in its own
  input contract (float NHWC/NCHW, or uint8 when preprocessing is baked in);
- each gets `warmup` untimed calls, then the candidates take turns, `turn` timed calls each, until
  every one has `iterations` samples: drift of the machine (thermal, other load) hits all alike;
- latency is the wall time of one call (median and p90), throughput is batch / median;
- peak memory is measured apart, in a child process per artifact (a process's peak RSS cannot be
  split between runtimes sharing it): peak RSS after loading and running it, and that peak minus the
  child's peak before loading (the runtime library alone), which is what the model costs.

`benchmarks/peers.py` times the alternatives users would pick (the TF SavedModel, timm eager, timm's
own ONNX export, timmx's exports) with the same `Candidate` / `time_round_robin` code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from xcit_edge.errors import ConversionError, UsageError
from xcit_edge.records import TensorInfo

log = logging.getLogger(__name__)

PROBE_RUNS = 3
PROBE_TIMEOUT_S = 600

# progress(stage, done, total): one stage per (batch, threads) configuration
Progress = Callable[[str, int, int], None]


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count: containers, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class BenchOptions:
    batches: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = field(default_factory=lambda: (usable_cores(),))
    warmup: int = 5
    iterations: int = 30
    turn: int = 5
    memory: bool = True
    seed: int = 0


@dataclass
class Candidate:
    """Something to time. load(threads) returns the call to time (input -> output); make_input(batch, rng)
    the input it takes; memory(batch, threads), when given, measures peak memory apart."""

    name: str
    runtime: str
    load: Callable[[int], Callable[[np.ndarray], object]]
    make_input: Callable[[int, np.random.Generator], np.ndarray]
    size_bytes: int | None = None
    memory: Callable[[int, int], dict] | None = None


@dataclass
class Timing:
    name: str
    runtime: str
    batch: int
    threads: int
    median_ms: float
    p90_ms: float
    throughput: float  # images per second
    ratio: float  # median over the first candidate's median, same batch and threads
    samples: int
    size_mb: float | None = None
    peak_mib: float | None = None
    model_mib: float | None = None


@dataclass
class BenchResult:
    timings: list[Timing]
    options: BenchOptions
    machine: dict

    def to_dict(self) -> dict:
        return {"machine": self.machine, "options": asdict(self.options),
                "results": [asdict(t) for t in self.timings]}


def machine_info() -> dict:
    """What a reader needs to compare runs: the CPU, the cores used, the runtimes' versions."""
    from xcit_edge.backends import all_backends
    from xcit_edge.util.versions import distribution_versions

    runtimes = {name: b.DISTRIBUTIONS[0] for name, b in all_backends().items()}  # the runtime is listed first
    found = distribution_versions([*runtimes.values(), "numpy"])
    versions = {**{name: found[dist] for name, dist in runtimes.items()}, "numpy": found["numpy"]}
    return {"platform": platform.platform(), "processor": _cpu_model(), "isa": isa_flags(),
            "usable_cores": usable_cores(), "python": platform.python_version(), "versions": versions}


# The vector extensions the runtimes' kernels choose between (XNNPACK, oneDNN, MLAS): one machine with
# AVX-512 VNNI and one with AVX2 alone ran the same int8 file differently, so every figure names them.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
             "asimd", "asimddp", "sve", "i8mm", "bf16")


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU reports in /proc/cpuinfo (x86 `flags`, Arm `Features`); [] elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def machine_line(m: dict | None = None) -> str:
    """One line every benchmark prints first: figures are comparable only within one machine's run."""
    m = m or machine_info()
    isa = " ".join(m["isa"]) or "ISA flags unknown"
    return f"{m['processor']} ({isa}), {m['usable_cores']} usable cores, {m['platform']}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_round_robin(calls: list[tuple[Callable, np.ndarray]], opts: BenchOptions,
                     tick: Callable[[], None] | None = None) -> list[np.ndarray]:
    """Per call, the wall times (ms) of `iterations` or more calls, the calls taking turns of `turn`."""
    for fn, x in calls:
        for _ in range(opts.warmup):
            fn(x)
    rounds = math.ceil(opts.iterations / opts.turn)
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for i, (fn, x) in enumerate(calls):
            for _ in range(opts.turn):
                t0 = time.perf_counter()
                fn(x)
                times[i].append((time.perf_counter() - t0) * 1e3)
                if tick:
                    tick()
    return [np.array(t) for t in times]


def bench_candidates(candidates: list[Candidate], opts: BenchOptions,
                     progress: Progress | None = None) -> list[Timing]:
    """Every candidate at every (threads, batch); candidates loaded once per thread count."""
    _check_options(opts)
    rng = np.random.default_rng(opts.seed)
    inputs = {(c.name, b): c.make_input(b, rng) for b in opts.batches for c in candidates}
    timings = []
    for threads in opts.threads:
        calls = [c.load(threads) for c in candidates]
        for batch in opts.batches:
            stage = f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}"
            total = math.ceil(opts.iterations / opts.turn) * opts.turn * len(candidates)
            done = [0]

            def tick(stage=stage, total=total, done=done):
                done[0] += 1
                if progress:
                    progress(stage, done[0], total)

            ms = time_round_robin([(fn, inputs[c.name, batch]) for c, fn in zip(candidates, calls, strict=True)],
                                  opts, tick)
            timings += _timings(candidates, ms, batch, threads)
        del calls
    if opts.memory:
        _add_memory(timings, candidates, opts)
    return timings


def _check_options(opts: BenchOptions) -> None:
    for name in ("batches", "threads"):
        values = getattr(opts, name)
        if not values or any(int(v) < 1 for v in values):
            raise UsageError(f"{name} must be positive integers (got {list(values)})")
    if opts.iterations < 1 or opts.turn < 1 or opts.warmup < 0:
        raise UsageError("iterations and turn must be at least 1, warmup at least 0")


def _timings(candidates: list[Candidate], ms: list[np.ndarray], batch: int, threads: int) -> list[Timing]:
    first = float(np.median(ms[0]))
    out = []
    for c, t in zip(candidates, ms, strict=True):
        med = float(np.median(t))
        out.append(Timing(c.name, c.runtime, batch, threads, med, float(np.percentile(t, 90)), batch / med * 1e3,
                          med / first, len(t), None if c.size_bytes is None else c.size_bytes / 1e6))
    return out


def _add_memory(timings: list[Timing], candidates: list[Candidate], opts: BenchOptions) -> None:
    """One child process per candidate and batch (threads barely move memory: measured at the most threads)."""
    by_name = {c.name: c for c in candidates}
    threads = max(opts.threads)
    for batch in opts.batches:
        for name, c in by_name.items():
            if c.memory is None:
                continue
            mem = c.memory(batch, threads)
            for t in timings:
                if t.name == name and t.batch == batch:
                    t.peak_mib, t.model_mib = mem["peak_mib"], mem["model_mib"]


# -- artifacts ---------------------------------------------------------------------------------------------


def artifact_candidate(path: Path) -> Candidate:
    """An artifact directory as a candidate: manifest and file hashes checked now; its runtime loads it once per
    thread count, every candidate before any timing (`bench_candidates`)."""
    from xcit_edge.artifact.open import open_artifact

    art = open_artifact(path, load=False)
    if art.broken:
        raise ConversionError(f"{art.path}: {art.spec.backend}'s runtime with default options cannot run it "
                              f"({art.broken}); not timed")
    io = art.manifest.io.input

    def load(threads: int):
        return partial(art.module.run, art.load(threads))

    return Candidate(_unique_name(art.spec.name, art.path), art.spec.backend, load, partial(_artifact_input, io),
                     art.file_bytes, partial(_probe_memory, art.path))


def _unique_name(target: str, path: Path) -> str:
    return target if path.name == target else f"{target} ({path.name})"


def _artifact_input(io: TensorInfo, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded input in the artifact's contract: uint8 pixels when preprocessing is baked in, else
    standard-normal floats (the scale of normalized pixels)."""
    dims = [int(d) for d in io.shape[1:]]
    if any(d < 1 for d in dims):
        raise UsageError(f"input shape {list(io.shape)} has a dynamic spatial size: bench needs a fixed one")
    shape = (batch, *dims)
    if io.dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32)


def _probe_memory(path: Path, batch: int, threads: int) -> dict:
    """Run `python -m xcit_edge.bench --probe PATH BATCH THREADS` and read its one-line JSON answer."""
    cmd = [sys.executable, "-m", "xcit_edge.bench", "--probe", str(path), str(batch), str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        log.warning("%s: memory probe timed out", path)
        return {"peak_mib": None, "model_mib": None}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("%s: memory probe failed (%s)", path, last[:200])
        return {"peak_mib": None, "model_mib": None}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak_rss_mib() -> float:
    """This process's peak RSS. Linux: VmHWM, which starts afresh at exec; ru_maxrss would not (it keeps
    the peak of the forked parent, here the bench process itself)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def probe(path: Path, batch: int, threads: int) -> dict:
    """In a fresh process: peak RSS with only the runtime imported, then after load and PROBE_RUNS calls."""
    import importlib

    from xcit_edge.artifact.manifest import read_manifest
    from xcit_edge.artifact.open import open_artifact, shipped_spec
    from xcit_edge.backends import backend

    where = Path(path)
    spec = shipped_spec(read_manifest(where), where)
    importlib.import_module(backend(spec.backend).RUNTIME_MODULE)
    base = _peak_rss_mib()
    art = open_artifact(where, threads, run_check=False)  # bench checked it before timing
    x = _artifact_input(art.manifest.io.input, batch, np.random.default_rng(0))
    for _ in range(PROBE_RUNS):
        art.module.run(art.session, x)
    peak = _peak_rss_mib()
    return {"peak_mib": round(peak, 1), "model_mib": round(peak - base, 1)}


def bench(artifacts: list[Path], opts: BenchOptions, progress: Progress | None = None) -> BenchResult:
    """Time every artifact directory in its runtime (see the module doc); the first is the ratios' base."""
    from xcit_edge.artifact.open import artifact_paths

    candidates = [artifact_candidate(Path(p)) for p in artifact_paths(artifacts, "bench")]
    return BenchResult(bench_candidates(candidates, opts, progress), opts, machine_info())


def table_rows(timings: list[Timing]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for a plain-text table (the CLI and benchmarks/peers.py print the same one)."""
    head = ["name", "runtime", "batch", "threads", "median ms", "p90 ms", "img/s", "x first", "MB", "peak MiB",
            "model MiB"]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = [[t.name, t.runtime, str(t.batch), str(t.threads), num(t.median_ms, ".2f"), num(t.p90_ms, ".2f"),
             num(t.throughput, ".1f"), num(t.ratio, ".2f"), num(t.size_mb, ".1f"), num(t.peak_mib, ".0f"),
             num(t.model_mib, ".0f")] for t in timings]
    return head, rows


def _probe_main(argv: list[str]) -> int:
    path, batch, threads = argv
    print(json.dumps(probe(Path(path), int(batch), int(threads))))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--probe":
        sys.exit(_probe_main(sys.argv[2:]))
    sys.exit("usage: python -m xcit_edge.bench --probe ARTIFACT BATCH THREADS (internal; use `xcit-edge bench`)")
