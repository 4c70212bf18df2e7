"""Interrupted and concurrent runs never leave an artifact that looks valid and is not.

Signals go to a real `xcit-edge convert` process (subprocess); the checks read the output directory
with our own hashing, independent of the manifest reader the tool uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import one_line_error, run

from xcit_edge.targets import all_targets
from xcit_edge.util.fs import output_lock

FLOAT_TARGETS = "onnx,tflite-fp16,openvino"


def _cli(*args) -> list[str]:
    return [sys.executable, "-c", "from xcit_edge.cli import main; main()", *map(str, args)]


def _tree(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones included) with its content hash."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _check_artifacts(out: Path) -> int:
    """Each visible artifact's manifest names files whose size and sha256 are what it says (hidden
    `.NAME.tmp-*` directories are work in progress, not artifacts: `validate OUT/*` never sees them)."""
    n = 0
    for manifest in sorted(m for m in out.glob("*/manifest.json") if not m.parent.name.startswith(".")):
        doc = json.loads(manifest.read_text())
        for entry in doc["artifact"]["files"]:
            data = (manifest.parent / entry["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{manifest.parent}/{entry['path']}"
            assert len(data) == entry["bytes"]
        n += 1
    return n


@pytest.fixture
def converted(fixture_artifacts, tmp_path) -> Path:
    """A private copy of a finished `convert` output (every target), to be replaced with --force."""
    src = Path(next(iter(fixture_artifacts.values()))["path"]).parent
    out = tmp_path / "out"
    shutil.copytree(src, out)
    return out


def _start(fixture_dir, out: Path, calib_npz, targets: str) -> subprocess.Popen:
    return subprocess.Popen(_cli("-q", "convert", fixture_dir, "--target", targets, "--out", out,
                                 "--calibration", calib_npz, "--force"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # a native crash prints the Python stacks (once seen: -11 after SIGTERM, stderr empty)
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONFAULTHANDLER": "1"})


def _wait_for_temp(out: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until a target is being written (its hidden temp directory exists in OUT)."""
    end = time.monotonic() + timeout
    while not any(p.name.startswith(".") and ".tmp-" in p.name for p in out.iterdir()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < end, "convert never started writing a target"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_conversion_exits_promptly_and_leaves_the_output_as_it_was(
        sig, converted, fixture_dir, calib_npz):
    before = _tree(converted)
    proc = _start(fixture_dir, converted, calib_npz, FLOAT_TARGETS)
    _wait_for_temp(converted, proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert took < 15, f"{took:.1f} s to stop"  # a behaviour bound (seconds, not milliseconds), not a speed goal
    assert _tree(converted) == before  # no temp left, nothing replaced, nothing half-written


def _kill_point(proc: subprocess.Popen, out: Path, rng: random.Random, targets: int) -> None:
    """Sleep until a seeded random moment: half the time at 0.2-8 s from the start (loading, freezing,
    calibration), half the time 0-2 s after the k-th target started writing (converting, checking, renaming)."""
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0.2, 8.0))
        return
    k, seen = rng.randint(1, targets), set()
    while proc.poll() is None and len(seen) < k:
        seen |= {p.name for p in out.iterdir() if ".tmp-" in p.name}
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 2.0))


def _kill_runs(runs: int, seed: int, converted: Path, fixture_dir, calib_npz, targets: str) -> None:
    """SIGKILL `convert --force` at seeded random points; after every kill each visible artifact must match
    its manifest. A last, unkilled run sweeps what the kills left and completes."""
    rng = random.Random(seed)
    count = len(all_targets()) if targets == "all" else len(targets.split(","))
    for _ in range(runs):
        proc = _start(fixture_dir, converted, calib_npz, targets)
        _kill_point(proc, converted, rng, count)
        proc.kill()
        proc.wait()
        assert _check_artifacts(converted) >= 1
    proc = _start(fixture_dir, converted, calib_npz, targets)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert not [p.name for p in converted.iterdir() if p.name.startswith(".")]  # stale temps swept
    assert _check_artifacts(converted) == len(all_targets())  # the directory holds every target
    assert not (converted.parent / ".out.lock").exists()


def test_sigkill_at_random_points_never_leaves_an_artifact_that_does_not_match_its_manifest(
        converted, fixture_dir, calib_npz):
    _kill_runs(3, 0, converted, fixture_dir, calib_npz, "onnx")


@pytest.mark.slow
def test_sigkill_at_random_points_twenty_runs_every_target(converted, fixture_dir, calib_npz):
    _kill_runs(20, 1, converted, fixture_dir, calib_npz, "all")


def test_a_run_that_does_not_unwind_is_ended_by_the_watchdog_with_its_temps_removed(tmp_path):
    """Python handles a signal only between bytecodes, and code may swallow KeyboardInterrupt: the watchdog
    thread still ends the process (128 + signal) after the grace time, removing the registered temps."""
    code = (
        "import sys, tempfile, time\n"
        "from pathlib import Path\n"
        "from xcit_edge.util import interrupt\n"
        "with interrupt.guard(grace=0.5):\n"
        f"    d = Path(tempfile.mkdtemp(dir={str(tmp_path)!r}))\n"
        "    (d / 'partial').write_bytes(b'x')\n"
        "    interrupt.register(d)\n"
        "    told = False\n"
        "    while True:\n"
        "        try:\n"
        "            if not told:\n"
        "                told = True\n"
        "                print(d, flush=True)  # inside the try: the signal comes after this line is read\n"
        "            time.sleep(60)\n"
        "        except KeyboardInterrupt:\n"
        "            pass\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    temp = Path(proc.stdout.readline().strip())
    assert temp.is_dir()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "error: interrupted" in err and not temp.exists()


def test_a_second_convert_into_a_locked_out_fails_clearly_or_waits(fixture_dir, calib_npz, tmp_path, caplog):
    out = tmp_path / "out"
    args = ("convert", fixture_dir, "--target", "onnx", "--out", out, "--calibration", calib_npz)
    with output_lock(out):  # another run's lock (flock: per open file, so it holds against this process too)
        line = one_line_error(run(*args))
    assert "being written by another xcit-edge run" in line and f"pid {os.getpid()}" in line and "--wait" in line
    assert not out.exists()

    holding = threading.Event()

    def hold():
        with output_lock(out):
            holding.set()
            time.sleep(1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    with caplog.at_level(logging.WARNING, logger="xcit_edge.util.fs"):
        # --wait: past the lock once the holder lets go, then on to the next check (a folder that is no
        # SavedModel: a MODEL path that does not exist is refused before any lock is taken)
        (tmp_path / "no-model").mkdir()
        line = one_line_error(run("convert", tmp_path / "no-model", "--out", out, "--wait"))
    holder.join()
    assert any("waiting" in r.message for r in caplog.records) and "no-model" in line
    assert not out.exists() and not (tmp_path / ".out.lock").exists()


def test_waiting_for_the_lock_really_waits(tmp_path):
    out = tmp_path / "out"
    order = []

    def second():
        with output_lock(out, wait=True):
            order.append("second")

    with output_lock(out):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("first done")
    t.join(timeout=10)
    assert order == ["first done", "second"]


def test_the_next_run_sweeps_what_a_killed_one_left(tmp_path):
    """A kill between the two renames of a replacement leaves the old artifact as `.NAME.old-*`: it comes
    back; a killed temp copy goes; files of other programs stay."""
    out = tmp_path / "out"
    (out / ".onnx.old-abcd1234").mkdir(parents=True)
    (out / ".onnx.old-abcd1234" / "model.onnx").write_bytes(b"old")
    (out / ".tflite-fp16.tmp-zz99zz99").mkdir()
    (out / ".tflite-fp16.tmp-zz99zz99" / "half").write_bytes(b"x")
    (out / ".reference.npz.tmp-q1w2e3r4").write_bytes(b"partial")
    (out / ".keep-me").write_bytes(b"user file")
    with output_lock(out):
        pass
    assert sorted(p.name for p in out.iterdir()) == [".keep-me", "onnx"]
    assert (out / "onnx" / "model.onnx").read_bytes() == b"old"


_SIGNAL_DURING_IMPORT = """
import pathlib, sys
from xcit_edge.util.interrupt import guard, register
tmp = pathlib.Path(sys.argv[1]); tmp.mkdir()
mod = pathlib.Path(sys.argv[2]); mod.write_text(
    "import os, signal, time\\nos.kill(os.getpid(), signal.SIGTERM)\\ntime.sleep(5)\\nprint('imported')\\n")
sys.path.insert(0, str(mod.parent))
with guard(grace=0.5):
    register(tmp)
    import slow_native_like_module
print('not interrupted')
"""


def test_a_signal_during_an_import_is_left_to_the_watchdog(tmp_path):
    """No exception is raised inside an import: one raised while a native extension initializes killed
    the process (SIGSEGV, stderr empty: seen when SIGTERM arrived during `import onnx`). The watchdog
    ends the process instead, with the signal's code, the one line, and the temps removed."""
    tmp, mod = tmp_path / ".out.tmp-1", tmp_path / "slow_native_like_module.py"
    res = subprocess.run([sys.executable, "-c", _SIGNAL_DURING_IMPORT, str(tmp), str(mod)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 128 + signal.SIGTERM, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in res.stderr
    assert "imported" not in res.stdout and not tmp.exists()


_SIGNAL_DURING_IMPORT_THEN_PUBLISH = """
import pathlib, sys
from xcit_edge.util.fs import atomic_dir
from xcit_edge.util.interrupt import guard
out, mod = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
mod.write_text("import os, signal\\nos.kill(os.getpid(), signal.SIGTERM)\\n")
sys.path.insert(0, str(mod.parent))
with guard(grace=30):
    try:
        with atomic_dir(out, force=True) as tmp:
            import quick_signalling_module
            (tmp / "f").write_text("new")
    except KeyboardInterrupt as e:
        print("interrupted", e.exit_code)
"""


def test_a_signal_recorded_during_an_import_stops_the_next_publish(tmp_path):
    """The import finishes before the watchdog's grace: the recorded signal is raised before the new
    output replaces the old one (once seen replacing an ONNX artifact within the grace)."""
    out, mod = tmp_path / "out", tmp_path / "quick_signalling_module.py"
    out.mkdir()
    (out / "f").write_text("old")
    res = subprocess.run([sys.executable, "-c", _SIGNAL_DURING_IMPORT_THEN_PUBLISH, str(out), str(mod)],
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == f"interrupted {128 + signal.SIGTERM}", res.stderr
    assert (out / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
