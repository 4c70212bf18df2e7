"""`xcit-edge bench`: the timing engine against a known clock, the thread counts reaching each runtime,
the CLI on every fixture target, and bad input."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, run

from xcit_edge.backends import backend
from xcit_edge.bench import BenchOptions, Candidate, artifact_candidate, bench_candidates, time_round_robin
from xcit_edge.targets import all_targets


def _sleeper(name: str, ms: float, log: list) -> Candidate:
    def load(threads: int):
        def call(x):
            log.append(name)
            time.sleep(ms / 1e3)

        return call

    return Candidate(name, "sleep", load, lambda b, rng: np.zeros((b, 1), np.float32))


def test_round_robin_measures_a_known_clock_and_takes_turns():
    log: list[str] = []
    opts = BenchOptions(batches=(1, 4), threads=(1,), warmup=2, iterations=8, turn=4, memory=False)
    timings = bench_candidates([_sleeper("a", 5, log), _sleeper("b", 15, log)], opts)
    assert [(t.name, t.batch) for t in timings] == [("a", 1), ("b", 1), ("a", 4), ("b", 4)]
    for t in timings:
        want = 5 if t.name == "a" else 15
        assert want <= t.median_ms < want + 4 and t.p90_ms >= t.median_ms and t.samples == 8
        assert t.throughput == pytest.approx(t.batch / t.median_ms * 1e3)
    b1 = {t.name: t for t in timings if t.batch == 1}
    assert b1["a"].ratio == 1.0 and 2.0 < b1["b"].ratio < 3.2
    # per configuration: warm-ups (2 each), then turns of 4 calls alternating
    timed = log[4:20]
    assert timed == ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4


def test_round_robin_rejects_bad_options():
    from xcit_edge.errors import UsageError

    with pytest.raises(UsageError):
        bench_candidates([_sleeper("a", 1, [])], BenchOptions(batches=(0,), memory=False))
    with pytest.raises(UsageError):
        bench_candidates([_sleeper("a", 1, [])], BenchOptions(threads=(), memory=False))
    assert len(time_round_robin([(lambda x: None, None)], BenchOptions(iterations=3, turn=2))[0]) == 4


def test_thread_counts_reach_the_runtimes(fixture_artifacts):
    for target in ("onnx", "openvino"):
        spec = all_targets()[target]
        session = backend(spec.backend).load(Path(fixture_artifacts[target]["path"]) / spec.file, spec, 1)
        if target == "onnx":
            assert session.get_session_options().intra_op_num_threads == 1
        else:
            assert int(session.get_property("INFERENCE_NUM_THREADS")) == 1
            assert str(session.get_property("PERFORMANCE_HINT")).endswith("LATENCY")


def test_bench_cli_every_target(fixture_artifacts):
    paths = [fixture_artifacts[t]["path"] for t in all_targets()]
    res = run("--quiet", "bench", *paths, "--batch", "1,2", "--threads", "1", "--iterations", "3", "--warmup", "1",
              "--turn", "3", "--no-memory", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["machine"]["usable_cores"] >= 1 and doc["options"]["batches"] == [1, 2]
    rows = doc["results"]
    assert [(r["name"], r["batch"]) for r in rows] == [(t, b) for b in (1, 2) for t in all_targets()]
    for r in rows:
        files = json.loads((Path(fixture_artifacts[r["name"]]["path"]) / "manifest.json").read_text())
        size = sum(e["bytes"] for e in files["artifact"]["files"])
        assert r["size_mb"] == pytest.approx(size / 1e6) and r["threads"] == 1 and r["median_ms"] > 0
        assert r["peak_mib"] is None and r["samples"] == 3
    assert rows[0]["ratio"] == 1.0
    table = run("--quiet", "bench", fixture_artifacts["onnx"]["path"], "--iterations", "2")
    assert table.exit_code == 0 and "median ms" in table.stdout and "peak MiB" in table.stdout
    assert table.stdout.splitlines()[-1].split()[-2] != "-"  # the memory probe ran


def test_memory_probe_counts_the_model_not_the_runtime(fixture_artifacts):
    mem = artifact_candidate(Path(fixture_artifacts["onnx"]["path"])).memory(8, 1)  # a fresh child process
    size_mib = Path(fixture_artifacts["onnx"]["path"], "model.onnx").stat().st_size / 2**20
    assert mem["model_mib"] >= size_mib  # the weights are in memory at least once
    assert mem["peak_mib"] - mem["model_mib"] > 20  # the runtime library itself, not charged to the model


def test_bench_bad_input(tmp_path, fixture_artifacts):
    assert "not found" in one_line_error(run("bench", tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "manifest" in one_line_error(run("bench", tmp_path / "empty"))
    res = run("bench", fixture_artifacts["onnx"]["path"], "--batch", "0")
    assert res.exit_code == 2 and "positive integers" in res.output
    res = run("bench", fixture_artifacts["onnx"]["path"], "--threads", "two")
    assert res.exit_code == 2 and "positive integers" in res.output
