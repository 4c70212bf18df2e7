"""`convert --max-drop X`: keep more of an int8 network in float until its measured top-1 drop holds.

The drop is measured the way `validate` measures it, on the calibration images: with labels the
top-1 accuracy drop against the source model (points), without labels the top-1 disagreement
with the source (points; an upper bound on any accuracy drop). When the first int8 artifact
misses X, what goes back to float is chosen by its measured effect, not by a local error signal
(per-layer quantization error ranked the layers poorly here: README "int8"):

* OpenVINO (NNCF): `nncf.quantize_with_accuracy_control` ranks and reverts layers itself.
* TFLite / ONNX: the backend lists its quantized layers in graph order (`quantized_layers`); they are
  cut into contiguous groups, about one per block. Each group is kept in float alone and the drop
  measured (one conversion each); then the groups are kept in float cumulatively, most helpful first,
  until the drop holds (`keep_nodes`: ai-edge-quantizer's `no_quantize` rules, ONNX Runtime's
  `nodes_to_exclude`). Every step is a full conversion, measured; the steps go in the manifest.

Nothing left to relax and still above X: the target fails (exit 1) with the best drop measured.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np

from xcit_edge.backends import Conversion
from xcit_edge.errors import ConversionError
from xcit_edge.records import MaxDropRecord
from xcit_edge.targets import TargetSpec

log = logging.getLogger(__name__)

GROUPS = 8  # layer groups when the graph has no fused blocks to count


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


def groups(layers: list[str], count: int) -> list[list[str]]:
    """`layers` (graph order) cut into `count` contiguous groups of near-equal size (fewer if fewer layers)."""
    count = max(1, min(count, len(layers)))
    edges = [round(i * len(layers) / count) for i in range(count + 1)]
    return [layers[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _measure(mod: ModuleType, spec: TargetSpec, workdir: Path, check: DropCheck) -> float:
    return round(check.drop(mod.run(mod.load(workdir / spec.file, spec), check.inputs)), 6)  # no float noise at X


def _with_float(spec: TargetSpec, names: list[str]) -> TargetSpec:
    return replace(spec, quantization={**spec.quantization, "keep_nodes": list(names)})


def _group_count(graph) -> int:
    """About one group per block: the XCA blocks fused in the graph and the two class-attention blocks."""
    fused = graph.xca.fused
    return fused + 2 if fused else GROUPS


def _greedy(mod: ModuleType, spec: TargetSpec, graph, calib: np.ndarray, workdir: Path, max_drop: float,
            check: DropCheck, steps: list[dict], layers: list[str]) -> tuple[Conversion | None, TargetSpec, float]:
    """Each group of `layers` (the quantized ones, in graph order) in float alone, measured; then the best
    groups in float together until the drop holds."""
    blocks = groups(layers, _group_count(graph))
    effect = []
    for i, group in enumerate(blocks):
        mod.convert(graph, _with_float(spec, group), calib, workdir)
        effect.append((_measure(mod, _with_float(spec, group), workdir, check), i))
        steps.append({"probe_group": i, "layers": len(group), "drop": round(effect[-1][0], 3)})
        log.info("%s: group %d of %d (%d layers) in float alone: drop %.2f", spec.name, i + 1, len(blocks),
                 len(group), effect[-1][0])
    kept: list[str] = []
    conv, drop = None, float("inf")
    for n, (_, i) in enumerate(sorted(effect), start=1):
        kept += blocks[i]
        trial = _with_float(spec, kept)
        conv = mod.convert(graph, trial, calib, workdir)
        drop = _measure(mod, trial, workdir, check)
        steps.append({"kept_groups": n, "kept_nodes": len(kept), "drop": round(drop, 3)})
        log.info("%s: %d groups (%d layers) in float: drop %.2f", spec.name, n, len(kept), drop)
        if drop <= max_drop:
            return conv, trial, drop
    return conv, _with_float(spec, kept), drop


def _relaxable(mod: ModuleType, graph, spec: TargetSpec) -> list[str]:
    """The layers the backend could give back to float, in graph order: none for a backend without layer
    selection, or a target that must stay all-integer (its drop is then reported as measured)."""
    return mod.quantized_layers(graph, spec)


def convert_within_drop(mod: ModuleType, spec: TargetSpec, graph, calib: np.ndarray, workdir: Path,
                        max_drop: float, check: DropCheck) -> tuple[Conversion, TargetSpec, MaxDropRecord]:
    """Convert, measure, relax until the drop is at most `max_drop` points.

    Returns the conversion, the spec it was made with (`keep_nodes` added) and the record for
    the manifest; raises ConversionError when nothing is left to relax.
    """
    conv = mod.convert(graph, spec, calib, workdir)
    drop = _measure(mod, spec, workdir, check)
    steps = [{"kept_nodes": 0, "drop": round(drop, 3)}]
    log.info("%s: %s %.2f points (--max-drop %.2f)", spec.name, check.basis, drop, max_drop)
    method = "none needed"
    if drop > max_drop and mod.convert_within_drop is not None:
        method = "nncf.quantize_with_accuracy_control"
        conv = mod.convert_within_drop(graph, spec, calib, check.targets, max_drop, workdir)
        drop = _measure(mod, spec, workdir, check)
        steps.append({"method": method, "drop": round(drop, 3)})
    elif drop > max_drop and (layers := _relaxable(mod, graph, spec)):
        method = "greedy over layer groups by measured drop"
        relaxed, spec, drop = _greedy(mod, spec, graph, calib, workdir, max_drop, check, steps, layers)
        conv = relaxed or conv
    record = MaxDropRecord(max_drop, round(drop, 3), check.basis, drop <= max_drop, method,
                           tuple(spec.quantization.get("keep_nodes", [])), tuple(steps))
    if drop > max_drop:
        best = min(steps, key=lambda st: st["drop"])
        raise ConversionError(f"{spec.name}: {check.basis} is {drop:.2f} points, above --max-drop {max_drop:g}, "
                              f"with nothing left to relax (best {best['drop']:.2f} points, "
                              f"{best.get('kept_nodes', best.get('method'))} layers in float)")
    return conv, spec, record
