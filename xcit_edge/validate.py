"""`xcit-edge validate`: run each artifact in its own runtime against the source model, give a verdict.

Flow (Optimum's exporter validation, extended to statistics over a calibration set):
open every artifact (manifest read, file hashes checked, runtime loads it) -> decode the
calibration images once with the preprocessing the artifacts record -> reference outputs,
from the source SavedModel's own serving function (`--source`, computed exactly as `reference`
computes it on this CPU) or a stored reference file (`--reference`, refused
when its model or images differ) -> each artifact on the same inputs, one image per call
(latency at batch 1) -> metrics and the target's tolerances -> for a failing artifact,
the first diverging XCA block (`localize.py`) -> optional report (`report.py`).

Exit codes: 0 every artifact passes, 1 some fail, 2 bad input (`UsageError`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xcit_edge.artifact.manifest import LABELS_FILE
from xcit_edge.artifact.open import OpenArtifact, artifact_paths, open_artifact
from xcit_edge.data.calibration import CalibrationSet, load_calibration
from xcit_edge.data.preprocessing import Preprocessing
from xcit_edge.errors import UsageError, first_line
from xcit_edge.metrics import agreement, cosine, failures, kl_divergence
from xcit_edge.reference import Reference, load_reference, run_reference
from xcit_edge.targets import TargetSpec
from xcit_edge.util.fs import sha256_tree
from xcit_edge.util.memory import check_model, image_budget, tree_bytes

log = logging.getLogger(__name__)

MAX_LABELS_BYTES = 1 << 20
LOADED_FACTOR = 3  # an artifact in its runtime: the file, the runtime's graph, its prepacked weights
WORST_IMAGES = 8

# progress(stage, done, total): stages "calibration", "reference" and each artifact's target name
Progress = Callable[[str, int, int], None]


@dataclass
class ValidateOptions:
    source: str | None = None
    reference: Path | None = None
    calibration: str | None = None
    labels_file: Path | None = None
    max_images: int | None = None
    weights: Path | None = None
    localize: bool = True
    trust_model: bool = False  # run a source whose graph reaches outside it (safety.check_ops)
    max_memory: int | None = None  # bytes the run may use (memory.check_fits); None: what is available


@dataclass
class ArtifactValidation:
    target: str
    path: Path
    spec: TargetSpec
    metrics: dict
    failures: list[str]
    latency_ms: dict
    outputs: np.ndarray | None
    worst: list[dict] = field(default_factory=list)
    per_class: list[dict] = field(default_factory=list)
    localization: dict | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"target": self.target, "path": str(self.path), "backend": self.spec.backend,
                "precision": self.spec.precision, "passed": self.passed, "failures": self.failures,
                "tolerances": self.spec.tolerances, "metrics": self.metrics, "latency_ms": self.latency_ms,
                "worst_images": self.worst, "per_class": self.per_class, "localization": self.localization}


@dataclass
class Validation:
    """Everything `validate` found; `report.py` renders it, `--json` prints `to_dict()`."""

    artifacts: list[ArtifactValidation]
    reference: dict
    calibration: dict
    kind: str
    ref_outputs: np.ndarray

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "kind": self.kind, "reference": self.reference,
                "calibration": self.calibration, "artifacts": [a.to_dict() for a in self.artifacts]}


def _class_names(art: OpenArtifact) -> list[str] | None:
    path = art.path / LABELS_FILE
    if not path.is_file() or path.stat().st_size > MAX_LABELS_BYTES:
        return None
    return [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]


def _common(arts: list[OpenArtifact]) -> tuple[str, Preprocessing]:
    """The source hash and preprocessing every artifact shares (one reference serves them all)."""
    first = arts[0].manifest
    for a in arts[1:]:
        if a.manifest.source.sha256 != first.source.sha256 or a.manifest.preprocessing != first.preprocessing:
            raise UsageError(f"{a.path} and {arts[0].path} come from different models or preprocessing; "
                             "validate them separately")
    return first.source.sha256, first.preprocessing


def _reference_from_source(opts: ValidateOptions, arts: list[OpenArtifact], pre: Preprocessing, sha: str,
                           cal_loader, progress: Progress | None) -> tuple[Reference, CalibrationSet, object]:
    from xcit_edge.distribute import make_placement
    from xcit_edge.graph import prepare
    from xcit_edge.source.resolve import resolve

    src = resolve(opts.source, weights=opts.weights)
    model_bytes = tree_bytes(src.path)
    check_model(model_bytes, opts.max_memory)  # before the source is loaded
    m = arts[0].manifest.source
    graph = prepare(src.path, signature=m.signature or None, output_key=m.output_key or None, preprocessing=pre,
                    allow_unknown=True, fuse=False, trust_model=opts.trust_model)
    src_sha = sha256_tree(src.path)
    if src_sha != sha:
        log.warning("%s is not the model the artifacts were converted from (sha256 %s…, manifest %s…); "
                    "comparing anyway", opts.source, src_sha[:12], sha[:12])
    cal = cal_loader(graph.labels, model_bytes)
    ref = run_reference(graph, make_placement("cpu"), cal, src.ref, src_sha, progress=progress)
    return ref, cal, graph


def _reference_from_file(opts: ValidateOptions, pre: Preprocessing, sha: str,
                         cal_loader) -> tuple[Reference, CalibrationSet]:
    ref = load_reference(opts.reference)
    if ref.model_sha256 != sha:
        raise UsageError(f"{opts.reference}: reference computed from another model (sha256 {ref.model_sha256[:12]}…, "
                         f"the artifacts come from {sha[:12]}…)")
    cal = cal_loader(None)
    if cal.images_digest != ref.calibration_digest or len(cal) != len(ref.names):
        raise UsageError(f"{opts.reference}: reference computed on other images ({len(ref.names)} images, digest "
                         f"{ref.calibration_digest[:12]}…; --calibration gives {len(cal)}, {cal.images_digest[:12]}…)")
    if cal.labels is not None and ref.labels is not None and not np.array_equal(cal.labels, ref.labels):
        raise UsageError(f"{opts.reference}: labels differ from the calibration data's labels")
    if cal.labels is None:
        cal.labels = ref.labels
    return ref, cal


def _run_timed(art: OpenArtifact, batches: Iterable[np.ndarray], n: int,
               progress: Progress | None) -> tuple[np.ndarray, dict]:
    """One image per call (what an app does), after one warm-up call; latency median and p90 in ms.
    `batches` are consecutive chunks of the inputs (a large set streams from its spool file)."""
    outs, times, warm = [], [], False
    for x in batches:
        if not warm:
            art.module.run(art.session, x[:1])
            warm = True
        for i in range(len(x)):
            t0 = time.perf_counter()
            outs.append(art.module.run(art.session, x[i:i + 1]))
            times.append(time.perf_counter() - t0)
            if progress:
                progress(art.spec.name, len(times), n)
    ms = np.array(times) * 1e3
    return np.concatenate(outs), {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
                                  "batch": 1, "images": len(times)}


def _class_name(class_names: list[str] | None, i: int) -> str:
    return class_names[i] if class_names and 0 <= i < len(class_names) else str(i)


def _worst(out: np.ndarray, ref: np.ndarray, idx: list[int], names: list[str], labels, kind: str,
           class_names: list[str] | None) -> list[dict]:
    def cls(i: int) -> str:
        return _class_name(class_names, i)

    cos = cosine(out[idx], ref[idx])
    kl = kl_divergence(out[idx], ref[idx]) if kind == "logits" else None
    rows = []
    for k, i in enumerate(idx):
        row = {"image": names[i], "cosine": float(cos[k])}
        if kl is not None:
            row.update(kl=float(kl[k]), reference_top1=cls(int(ref[i].argmax())),
                       artifact_top1=cls(int(out[i].argmax())))
            if labels is not None:
                row["label"] = cls(int(labels[i]))
        rows.append(row)
    return rows


def _per_class(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None,
               class_names: list[str] | None) -> list[dict]:
    if labels is None or out.ndim != 2:
        return []
    rows = []
    for c in np.unique(labels):
        m = labels == c
        acc, ref_acc = float((out[m].argmax(-1) == c).mean()), float((ref[m].argmax(-1) == c).mean())
        name = _class_name(class_names, int(c))
        rows.append({"class": name, "images": int(m.sum()), "reference_accuracy": ref_acc, "accuracy": acc,
                     "drop": 100.0 * (ref_acc - acc)})
    return rows


def validate_one(art: OpenArtifact, batches: Iterable[np.ndarray], ref: Reference, labels: np.ndarray | None,
                 names: list[str], class_names: list[str] | None,
                 progress: Progress | None = None) -> ArtifactValidation:
    """Run one artifact on the inputs (`batches`: consecutive chunks, in the artifact's input contract)
    and hold it to its target's tolerances against `ref`."""
    if art.broken:
        return ArtifactValidation(art.spec.name, art.path, art.spec, {},
                                  [f"does not run with {art.spec.backend}'s default options: {art.broken}"], {}, None)
    want = art.manifest.io.output.shape
    if want and want[-1] not in (-1, ref.outputs.shape[-1]):
        raise UsageError(f"{art.path}: outputs {want[-1]} values per image, the reference {ref.outputs.shape[-1]}: "
                         "not the model this artifact came from")
    try:
        out, latency = _run_timed(art, batches, len(ref.outputs), progress)
    except Exception as e:  # noqa: BLE001 - a runtime failure is this artifact's verdict, not the run's
        return ArtifactValidation(art.spec.name, art.path, art.spec, {}, [f"does not run: {first_line(e)}"], {}, None)
    m = agreement(out, ref.outputs, labels, kind=art.kind, worst=WORST_IMAGES)
    worst = _worst(out, ref.outputs, m.pop("worst"), names, labels, art.kind, class_names)
    return ArtifactValidation(art.spec.name, art.path, art.spec, m, failures(m, art.spec.tolerances), latency, out,
                              worst, _per_class(out, ref.outputs, labels, class_names))


def validate(artifacts: list[Path], opts: ValidateOptions, progress: Progress | None = None) -> Validation:
    """Validate every artifact against the source model or a reference file (see the module doc)."""
    artifacts = artifact_paths(artifacts, "validate")
    if (opts.source is None) == (opts.reference is None):
        raise UsageError("give exactly one of --source MODEL and --reference REF.npz")
    if not opts.calibration:
        raise UsageError("--calibration is required (the images to validate on)")
    arts = [open_artifact(p) for p in artifacts]
    sha, pre = _common(arts)
    class_names = _class_names(arts[0])

    loaded = LOADED_FACTOR * sum(a.file_bytes for a in arts)

    def cal_loader(model_labels, model_bytes: int = 0):
        cb = (lambda d, n: progress("calibration", d, n)) if progress else None
        budget = image_budget(model_bytes, pre.size, opts.max_memory, loaded_bytes=loaded, streaming=True,
                              outputs=len(arts) + 1)
        return load_calibration(opts.calibration, pre, class_names=class_names or model_labels,
                                labels_file=opts.labels_file, limit=opts.max_images, progress=cb,
                                before_decode=budget)

    graph = None
    if opts.source is not None:
        ref, cal, graph = _reference_from_source(opts, arts, pre, sha, cal_loader, progress)
        ref_info = {"from": "source", "model": opts.source, "sha256": ref.model_sha256, **ref.provenance()}
    else:
        ref, cal = _reference_from_file(opts, pre, sha, cal_loader)
        ref_info = {"from": "file", "file": str(opts.reference), "model": ref.meta.get("model"),
                    "sha256": ref.model_sha256, **ref.provenance()}
    results = []
    for art in arts:
        log.info("validating %s on %d images", art.spec.name, len(cal))
        res = validate_one(art, art.input_batches(cal, pre), ref, cal.labels, cal.names, class_names, progress)
        if not res.passed and res.outputs is not None and opts.localize:
            res.localization = _localize(graph, art, cal, pre, opts.trust_model)
        results.append(res)
    calib = {"source": cal.source, "images": len(cal), "digest": cal.images_digest, "labels": cal.labels is not None,
             "skipped": [{"image": n, "why": w} for n, w in cal.skipped]}
    return Validation(results, ref_info, calib, arts[0].kind, ref.outputs)


def _localize(graph, art: OpenArtifact, cal: CalibrationSet, pre: Preprocessing, trust_model: bool) -> dict:
    """The first XCA block whose output leaves the source's (needs the source graph, not a file)."""
    if graph is None:
        return {"status": "unavailable", "why": "localization runs the source model: use --source"}
    from xcit_edge.localize import localize

    return localize(graph.source, art, cal, pre, trust_model=trust_model)
