"""Run an artifact once the way an app would, in a child process: a native abort is a result, not a crash.

An app loads a model with its runtime's *default* options: LiteRT's `Interpreter(model_path=...)`
(which applies the XNNPACK delegate), an ONNX Runtime session with default options, OpenVINO's
`compile_model(path, "CPU")`. Some failures are not exceptions: LiteRT aborted with
`free(): double free detected in tcache 2` on an int8 model XNNPACK refused (seen on an AVX2-only
x86 CPU). So the run happens in a child (`python -m xcit_edge.artifact.smoke BACKEND PATH`): the backend's
`run_defaults`, one inference on a zero input of the artifact's own input contract, and its exit status,
signal or last error line is what the parent reports. `convert` fails a target whose artifact does not pass.

For LiteRT the child also reports how XNNPACK took the model: the delegate kernels in the execution
plan (one per partition) and the nodes it left to the builtin kernels.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 300
RESULT_PREFIX = "xcit-edge-smoke: "


@dataclass
class SmokeResult:
    ok: bool
    why: str = ""  # one line: the signal, the exit status or the runtime's last error line
    details: dict | None = None  # what the runtime reported (LiteRT: XNNPACK partitions)
    died: bool = False  # the child did not return: a signal (native abort) or the timeout, not a runtime error


def smoke(backend: str, path: Path, timeout: float = TIMEOUT_S) -> SmokeResult:
    """Load `path` with `backend`'s runtime defaults and run it once, in a child process."""
    cmd = [sys.executable, "-m", "xcit_edge.artifact.smoke", backend, str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return SmokeResult(False, f"no result within {timeout:.0f} s", died=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode == 0 and lines:
        return SmokeResult(True, details=json.loads(lines[-1][len(RESULT_PREFIX):]))
    return SmokeResult(False, _why(proc.returncode, proc.stderr), died=proc.returncode < 0)


def _why(code: int, stderr: str) -> str:
    text = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    last = text[-1][:300] if text else ""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the runtime aborted the process ({name})" + (f": {last}" if last else "")
    return last or f"exit status {code}"


def main(argv: list[str]) -> int:
    from xcit_edge.backends import backend

    name, path = argv
    details = backend(name).run_defaults(Path(path))
    print(RESULT_PREFIX + json.dumps(details), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
