"""`convert --max-drop X`: keep more of an int8 network in float until its measured top-1 drop holds.

The drop is measured the way `validate` measures it, on the calibration images: with labels the
top-1 accuracy drop against the source model (points), without labels the top-1 disagreement
with the source (points; an upper bound on any accuracy drop). When the first int8 artifact
misses X, the backend's own tools choose what to give back to float:

* OpenVINO (NNCF): `nncf.quantize_with_accuracy_control` ranks and reverts layers itself.
* TFLite / ONNX: the backend ranks quantized layers worst first (`rank_nodes`: TFLite's
  quantization debugger `rmse/scale`, ONNX Runtime's `qdq_loss_debug` SQNR); 1, 2, 4, ... of
  them stay float (`denylisted_nodes` / `nodes_to_exclude`) until the drop holds or every ranked
  layer is float. Each step is a full conversion, measured; the steps go in the manifest.

Nothing left to relax and still above X: the target fails (exit 1) with the best drop measured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np

from xcit_edge.backends import Conversion
from xcit_edge.errors import ConversionError
from xcit_edge.targets import TargetSpec

log = logging.getLogger(__name__)

RANK_IMAGES = 32


@dataclass
class DropCheck:
    """The source's outputs on the calibration inputs, and labels when the data has them."""

    inputs: np.ndarray
    ref: np.ndarray
    labels: np.ndarray | None

    @property
    def basis(self) -> str:
        what = "top-1 accuracy drop" if self.labels is not None else "top-1 disagreement with the source"
        return f"{what} on {len(self.inputs)} calibration images"

    @property
    def targets(self) -> np.ndarray:
        """What top-1 should be: the labels, or the source's own predictions."""
        return self.labels if self.labels is not None else self.ref.argmax(-1)

    def drop(self, out: np.ndarray) -> float:
        t = self.targets
        return 100.0 * float((self.ref.argmax(-1) == t).mean() - (out.argmax(-1) == t).mean())


def ladder(n: int) -> list[int]:
    """How many ranked layers each retry keeps in float: 1, 2, 4, ... and finally all `n`."""
    sizes = [1 << i for i in range(max(n, 1).bit_length()) if 1 << i < n]
    return [*sizes, n] if n else []


def _measure(mod: ModuleType, spec: TargetSpec, workdir: Path, check: DropCheck) -> float:
    return round(check.drop(mod.run(mod.load(workdir / spec.file, spec), check.inputs)), 6)  # no float noise at X


def convert_within_drop(mod: ModuleType, spec: TargetSpec, graph, calib: np.ndarray, workdir: Path,
                        max_drop: float, check: DropCheck) -> tuple[Conversion, TargetSpec, dict]:
    """Convert, measure, relax until the drop is at most `max_drop` points.

    Returns the conversion, the spec it was made with (`keep_nodes` added) and the record for
    the manifest; raises ConversionError when nothing is left to relax.
    """
    conv = mod.convert(graph, spec, calib, workdir)
    drop = _measure(mod, spec, workdir, check)
    steps = [{"kept_nodes": 0, "drop": round(drop, 3)}]
    log.info("%s: %s %.2f points (--max-drop %.2f)", spec.name, check.basis, drop, max_drop)
    method = "none needed"
    if drop > max_drop and hasattr(mod, "convert_within_drop"):
        method = "nncf.quantize_with_accuracy_control"
        conv = mod.convert_within_drop(graph, spec, calib, check.targets, max_drop, workdir)
        drop = _measure(mod, spec, workdir, check)
        steps.append({"method": method, "drop": round(drop, 3)})
    elif drop > max_drop:
        method = "rank_nodes + deny-list"
        ranked = mod.rank_nodes(graph, spec, calib[:RANK_IMAGES], workdir)
        for k in ladder(len(ranked)):
            spec = replace(spec, quantization={**spec.quantization, "keep_nodes": ranked[:k]})
            conv = mod.convert(graph, spec, calib, workdir)
            drop = _measure(mod, spec, workdir, check)
            steps.append({"kept_nodes": k, "drop": round(drop, 3)})
            log.info("%s: %d of %d ranked layers in float: drop %.2f", spec.name, k, len(ranked), drop)
            if drop <= max_drop:
                break
    record = {"max_drop": max_drop, "measured_drop": round(drop, 3), "basis": check.basis, "held": drop <= max_drop,
              "method": method, "kept_nodes": list(spec.quantization.get("keep_nodes", [])), "steps": steps}
    if drop > max_drop:
        best = min(steps, key=lambda st: st["drop"])
        raise ConversionError(f"{spec.name}: {check.basis} is {drop:.2f} points, above --max-drop {max_drop:g}, "
                              f"with nothing left to relax (best {best['drop']:.2f} points: "
                              f"{best.get('kept_nodes', best.get('method'))} layers in float)")
    return conv, spec, record
