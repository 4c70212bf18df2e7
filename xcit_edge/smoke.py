"""Run an artifact once the way an app would, in a child process: a native abort is a result, not a crash.

An app loads a model with its runtime's *default* options: LiteRT's `Interpreter(model_path=...)`
(which applies the XNNPACK delegate), an ONNX Runtime session with default options, OpenVINO's
`compile_model(path, "CPU")`. Some failures are not exceptions: LiteRT aborted with
`free(): double free detected in tcache 2` on an int8 model XNNPACK refused (seen on an AVX2-only
x86 CPU). So the run happens in a child (`python -m xcit_edge.smoke BACKEND PATH`), one inference on a
zero input of the artifact's own input contract, and its exit status, signal or last error line is what
the parent reports. `convert` fails a target whose artifact does not pass.

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

import numpy as np

TIMEOUT_S = 300
RESULT_PREFIX = "xcit-edge-smoke: "


@dataclass
class SmokeResult:
    ok: bool
    why: str = ""  # one line: the signal, the exit status or the runtime's last error line
    details: dict | None = None  # what the runtime reported (LiteRT: XNNPACK partitions)
    died: bool = False  # the child did not return: a signal (native abort) or the timeout, not a runtime error


def _zeros(shape, dtype) -> np.ndarray:
    """A zero input; dynamic dimensions (None, -1, a name) become 1."""
    dims = [int(d) if isinstance(d, int | np.integer) and int(d) > 0 else 1 for d in shape]
    return np.zeros(dims, dtype=dtype)


def _tflite(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))  # default options: the XNNPACK delegate applied
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    interp.set_tensor(d["index"], _zeros(d["shape"], d["dtype"]))
    interp.invoke()
    raw = interp._interpreter
    nodes = [(raw.NodeName(i), set(raw.NodeInputs(i)), set(raw.NodeOutputs(i))) for i in range(raw.NumNodes())]
    model_nodes = [n for n in nodes if n[0] != "DELEGATE"]  # delegate kernels are appended after the model's
    kernels = [n for n in nodes if n[0] == "DELEGATE"]
    builtin = _builtin_nodes(model_nodes, kernels, set(raw.OutputIndices()))
    return {"xnnpack_partitions": len(kernels), "nodes": len(model_nodes), "builtin_nodes": len(builtin),
            "builtin_ops": sorted({model_nodes[i][0] for i in builtin})}


def _builtin_nodes(model_nodes: list, kernels: list, outputs: set) -> set[int]:
    """Model nodes no delegate replaced (they run on LiteRT's builtin kernels), by data flow: a delegate
    kernel computes its partition's boundary tensors and hides the rest, so a node outside every partition
    produces a tensor a kernel reads, a model output no kernel produces, or an input of another such node."""
    made_by_kernels = set().union(*(k[2] for k in kernels)) if kernels else set()
    read_by_kernels = set().union(*(k[1] for k in kernels)) if kernels else set()
    outside = {i for i, (_, _, outs) in enumerate(model_nodes)
               if not outs & made_by_kernels and outs & (read_by_kernels | outputs)}
    while True:
        needed = set().union(*(model_nodes[i][1] for i in outside)) if outside else set()
        more = {i for i, (_, _, outs) in enumerate(model_nodes)
                if i not in outside and not outs & made_by_kernels and outs & needed}
        if not more:
            return outside
        outside |= more


def _onnx(path: Path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32  # uint8: preprocessing baked in
    session.run(None, {inp.name: _zeros(inp.shape, dtype)})
    return {}


def _openvino(path: Path) -> dict:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    shape = [d.get_length() if d.is_static else 1 for d in compiled.inputs[0].get_partial_shape()]
    dtype = compiled.inputs[0].get_element_type().to_dtype()
    compiled.create_infer_request().infer({0: np.zeros(shape, dtype)})
    return {}


RUNNERS = {"tflite": _tflite, "onnx": _onnx, "openvino": _openvino}


def smoke(backend: str, path: Path, timeout: float = TIMEOUT_S) -> SmokeResult:
    """Load `path` with `backend`'s runtime defaults and run it once, in a child process."""
    cmd = [sys.executable, "-m", "xcit_edge.smoke", backend, str(path)]
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
    backend, path = argv
    details = RUNNERS[backend](Path(path))
    print(RESULT_PREFIX + json.dumps(details), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
