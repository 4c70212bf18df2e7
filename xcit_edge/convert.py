"""`xcit-edge convert`: one SavedModel in, one checked artifact per target out.

Flow: resolve MODEL -> prepare the graph once (freeze, canonicalize, adapt input) ->
decode calibration data once -> per target: backend.convert into a temp directory, add
labels (+ TFLite metadata), run the artifact in its own runtime against the prepared graph
on a few images, write `manifest.json`, rename into `OUT/<target>/`.

A float target that disagrees with the source beyond its tolerance is a conversion bug and
fails; a quantized one only warns (its statistical gate is `validate`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from xcit_edge.artifact.manifest import LABELS_FILE, MANIFEST, Manifest, file_entries, library_versions, write_manifest
from xcit_edge.artifact.smoke import smoke
from xcit_edge.backends import backend
from xcit_edge.backends.base import conversion_progress, step
from xcit_edge.data.calibration import CalibrationSet, load_calibration
from xcit_edge.data.preprocessing import Preprocessing
from xcit_edge.errors import ConversionError, OutputError, UsageError, XcitEdgeError, first_line
from xcit_edge.graph import PreparedGraph, prepare
from xcit_edge.metrics import agreement, failures
from xcit_edge.precision import DropCheck, convert_within_drop
from xcit_edge.records import CalibrationRecord, CheckRecord, LabelsRecord, SourceInfo, XcaRecord
from xcit_edge.reference import REFERENCE_FILE, ReferenceOptions, run_reference
from xcit_edge.source.resolve import resolve
from xcit_edge.targets import TargetSpec
from xcit_edge.util.fs import atomic_dir, check_output_dir, output_lock, sha256_tree
from xcit_edge.util.memory import check_model, convert_factor, image_budget, release_freed_memory, tree_bytes

log = logging.getLogger(__name__)

CHECK_IMAGES = 16
DEFAULT_CALIBRATION_IMAGES = 100
DROP_CHECK_IMAGES = 200  # --max-drop measures on this many decoded images (a point is 2 images)
MIN_FREE_BYTES = 1 << 20

# progress(event, done, total[, step]): events "prepare" (graph.PREPARE_STEPS done), "calibration" (images
# decoded), "source" (the source model runs on the check images), "target" (targets done; with the step the
# current one is in) and "quantize" (calibration images a quantizer ran, per pass)
Progress = Callable[..., None]


class ArtifactCheckError(ConversionError):
    """An artifact that does not run, or a float one that does not reproduce its source."""


@dataclass
class ConvertOptions:
    calibration: str | None = None
    labels_file: Path | None = None
    calibration_images: int | None = None
    signature: str | None = None
    output_key: str | None = None
    preprocessing: Preprocessing | None = None
    bake_preprocessing: bool = False
    allow_unknown_model: bool = False
    weights: Path | None = None
    force: bool = False
    write_tflite_metadata: bool = True
    fuse: bool = True
    allow_partial_fusion: bool = False
    inline_functions: bool = False
    max_drop: float | None = None  # int8 targets: keep layers in float until the top-1 drop is at most this
    reference: ReferenceOptions | None = None  # also store the source's outputs (OUT/reference.npz), e.g. on a TPU
    trust_model: bool = False  # run a model whose graph reaches outside it (safety.check_ops)
    wait: bool = False  # another run holds OUT's lock: wait for it instead of failing
    max_memory: int | None = None  # bytes the run may use (memory.check_fits); None: what is available


@dataclass
class ArtifactResult:
    """A written artifact, or (`error` set, nothing written) a target that failed."""

    target: str
    path: Path
    manifest: Manifest | None
    error: str | None = None

    def to_dict(self) -> dict:
        """The `convert --json` entry (the manifest's main figures; the file has the rest)."""
        m = self.manifest
        if self.error or m is None:
            return {"target": self.target, "error": self.error}
        return {"target": self.target, "path": str(self.path), "manifest": str(self.path / MANIFEST),
                "files": [e.to_dict() for e in m.files], "check": m.check.to_dict(),
                "kept_float": list(m.kept_float), "seconds": m.conversion_seconds,
                "xca_fused": m.xca.in_artifact, "max_drop": m.max_drop.to_dict() if m.max_drop else None}


def calibration_limit(targets: list[TargetSpec], opts: ConvertOptions) -> int:
    wanted = max([int(t.quantization.get("calibration_images", DEFAULT_CALIBRATION_IMAGES)) for t in targets
                  if t.calibrated] or [CHECK_IMAGES])
    if opts.reference is not None:  # the stored reference covers the decoded images: more than a quick check
        wanted = max(wanted, DEFAULT_CALIBRATION_IMAGES)
    if opts.max_drop is not None:  # the drop is measured on the decoded images, also for dynamic targets
        wanted = max(wanted, DROP_CHECK_IMAGES)
    return opts.calibration_images or wanted


def _calibration(graph: PreparedGraph, targets: list[TargetSpec], opts: ConvertOptions,
                 progress: Progress | None, before_decode: Callable[[int, bool], None]) -> CalibrationSet:
    limit = calibration_limit(targets, opts)
    data = opts.calibration
    if data is None:
        data = "sample"
        if any(t.calibrated for t in targets):
            log.warning("no --calibration given: quantizing with the shipped synthetic sample; "
                        "give real images for a deployable int8 model")
    cb = (lambda d, n: progress("calibration", d, n)) if progress else None
    return load_calibration(data, graph.preprocessing, class_names=graph.labels, labels_file=opts.labels_file,
                            limit=limit, progress=cb, before_decode=before_decode)


def _check(spec: TargetSpec, mod, workdir: Path, conv_files: list[str], inputs: np.ndarray,
           ref: np.ndarray, labels: np.ndarray | None, kind: str) -> CheckRecord:
    try:
        out = mod.run(mod.load(workdir / conv_files[0], spec), inputs)
    except Exception as e:  # runtimes refuse models with their own exception types (ORT: no RuntimeError)
        raise ArtifactCheckError(f"{spec.name}: the converted model does not run in {spec.backend}'s runtime "
                                 f"({first_line(e)})") from e
    res = agreement(out, ref, labels, kind=kind)
    return CheckRecord.of(res, failures(res, spec.tolerances))


def _run_with_defaults(spec: TargetSpec, path: Path) -> dict:
    """The artifact loaded and run once with its runtime's default options in a child process (what an
    app does; `smoke.py`): a runtime that errors or aborts on it fails the target, nothing is written."""
    res = smoke(spec.backend, path)
    if not res.ok:
        raise ArtifactCheckError(f"{spec.name}: {spec.backend}'s runtime with default options cannot run the "
                                 f"artifact ({res.why})")
    details = res.details or {}
    if details.get("builtin_nodes"):
        log.info("%s: XNNPACK takes the model in %d partitions; %d of %d nodes run on the builtin kernels (%s)",
                 spec.name, details["xnnpack_partitions"], details["builtin_nodes"], details["nodes"],
                 ", ".join(details["builtin_ops"]))
    return details


def _write_labels(workdir: Path, labels: list[str] | None) -> list[str]:
    if not labels:
        return []
    (workdir / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    return [LABELS_FILE]


def _app_metadata(mod, workdir: Path, spec: TargetSpec, graph: PreparedGraph, opts: ConvertOptions) -> dict | None:
    """In-file metadata for apps, where the backend's format has it (TFLite Metadata)."""
    return mod.describe(workdir / spec.file, graph) if opts.write_tflite_metadata else None


def _convert_one(spec: TargetSpec, graph: PreparedGraph, cal: CalibrationSet, calib_inputs: np.ndarray,
                 ref: np.ndarray, source_info: SourceInfo, out: Path, opts: ConvertOptions,
                 drop_check: DropCheck | None) -> ArtifactResult:
    mod = backend(spec.backend)
    dest = out / spec.name
    with atomic_dir(dest, force=True) as tmp:
        t0 = time.perf_counter()
        max_drop = None
        try:
            if drop_check is not None and spec.quantized:
                conv, spec, max_drop = convert_within_drop(mod, spec, graph, calib_inputs, tmp, opts.max_drop,
                                                           drop_check)
            else:
                conv = mod.convert(graph, spec, calib_inputs if spec.quantized else None, tmp)
            seconds = time.perf_counter() - t0
            extra = _write_labels(tmp, graph.labels)
            meta = _app_metadata(mod, tmp, spec, graph, opts)
            step("running with the runtime's default options")
            defaults = _run_with_defaults(spec, tmp / conv.files[0])
            step(f"checking against the source on {min(len(calib_inputs), CHECK_IMAGES)} images")
            check = _check(spec, mod, tmp, conv.files, calib_inputs[:CHECK_IMAGES], ref, _labels(cal),
                           "features" if graph.features else "logits")
        except OSError as e:
            raise OutputError(f"cannot write {dest}: {e.strerror or e}") from e
        except XcitEdgeError:
            raise
        except MemoryError:
            raise
        except Exception as e:  # a converter's or runtime's own failure: this target fails, the others go on
            if shutil.disk_usage(tmp).free < MIN_FREE_BYTES:
                raise OutputError(f"cannot write {dest}: no space left on device") from e
            log.debug("%s failed", spec.name, exc_info=True)
            raise ConversionError(f"{spec.name}: {spec.backend} conversion failed "
                                  f"({type(e).__name__}: {first_line(e)})") from e
        xca = _xca_in_artifact(spec, graph, conv.details, opts)
        if check.failures and not spec.quantized:
            why = "; ".join(check.failures)
            raise ArtifactCheckError(f"{spec.name}: artifact does not match the source ({why})")
        if check.failures:
            log.warning("%s: quick check outside tolerance (%s); run `xcit-edge validate`",
                        spec.name, "; ".join(check.failures))
        manifest = Manifest(
            target=spec.to_dict(), source=source_info, io=graph.io_spec(), preprocessing=graph.preprocessing,
            preprocessing_origin=graph.preprocessing_origin, baked=graph.baked,
            files=file_entries(tmp, conv.files + extra), check=check, xca=xca, kept_float=tuple(conv.kept_float),
            conversion_seconds=round(seconds, 2), max_drop=max_drop,
            labels=LabelsRecord(LABELS_FILE, len(graph.labels)) if graph.labels else None,
            calibration=CalibrationRecord(cal.source, len(calib_inputs), cal.digest, len(cal.skipped))
            if spec.calibrated else None,
            libraries=library_versions(), rewrites=graph.rewrites, backend_details=conv.details,
            runtime_defaults=defaults, app_metadata=meta)
        manifest = write_manifest(tmp, manifest)
    return ArtifactResult(spec.name, dest, manifest)


def _xca_in_artifact(spec: TargetSpec, graph: PreparedGraph, details: dict, opts: ConvertOptions) -> XcaRecord:
    """The fused XCA blocks the artifact really contains (read back by the backend): every block
    fused in the graph must have survived conversion."""
    found = details.pop("xca_blocks", None)
    info = replace(graph.xca, in_artifact=found, form=details.pop("xca_form", "graph"))
    if graph.xca.fused and found != graph.xca.fused and not opts.allow_partial_fusion:
        raise ArtifactCheckError(f"{spec.name}: {found} fused XCA blocks in the artifact, {graph.xca.fused} in "
                                 "the graph (pass --allow-partial-fusion to accept)")
    return info


def _with_options(spec: TargetSpec, opts: ConvertOptions) -> TargetSpec:
    """The spec with the run's switches (ConvertOptions fields its backend lists in RUN_OPTIONS) turned on."""
    switched = {name: True for name in backend(spec.backend).RUN_OPTIONS if getattr(opts, name, False)}
    return replace(spec, options={**spec.options, **switched}) if switched else spec


def _labels(cal: CalibrationSet) -> np.ndarray | None:
    return None if cal.labels is None else cal.labels[:CHECK_IMAGES]


def convert(model: str, targets: list[TargetSpec], out: Path, opts: ConvertOptions | None = None,
            progress: Progress | None = None) -> list[ArtifactResult]:
    """Convert MODEL to every target under `out`, one artifact directory per target.

    A target that fails to convert or to run is reported in its result (`error`) and the
    others go on; bad input and a full disk stop everything. One run at a time writes to `out`
    (its lock); each artifact appears whole, replacing the previous one only once complete.

    Args:
        model: a SavedModel directory, an archive, a TF Hub handle or an architecture name.
        targets: the specs to convert to (`targets.parse_targets`).
        out: the output directory; `out/<target>/` is each artifact.
        opts: calibration, preprocessing, fusion, --max-drop, reference and safety settings.
        progress: called as (stage, done, total) while images decode and targets convert.
    Returns:
        One ArtifactResult per target, in order: its manifest, or the error that stopped it.
    Raises:
        UsageError: bad input (the model, its signature, the calibration images, an occupied `out`).
        OutputError: `out` cannot be written (permissions, a full disk).
        ConversionError: the source graph itself cannot be converted (e.g. XCA blocks that do not fuse).
    """
    opts = opts or ConvertOptions()
    model, out = str(model), Path(out)  # a Path for MODEL too (the manifest records it as text)
    if not targets:
        raise UsageError("no targets to convert to")
    with output_lock(out, wait=opts.wait):
        return _convert_locked(model, targets, out, opts, progress)


def convert_memory_factor(targets: list[TargetSpec]) -> float:
    """The memory estimate's model factor of converting to `targets` in one process (each distinct
    backend's CONVERT_MEMORY_FACTOR, combined by `util.memory.convert_factor`)."""
    return convert_factor({t.backend: backend(t.backend).CONVERT_MEMORY_FACTOR for t in targets}.values())


def _convert_locked(model: str, targets: list[TargetSpec], out: Path, opts: ConvertOptions,
                    progress: Progress | None) -> list[ArtifactResult]:
    check_output_dir(out, opts.force)  # before minutes of work
    placement = _reference_placement(opts.reference)  # a TPU that is not there fails before any conversion
    src = resolve(model, weights=opts.weights)
    model_bytes = tree_bytes(src.path)
    factor = convert_memory_factor(targets)
    check_model(model_bytes, opts.max_memory, factor)  # before the model is loaded
    graph = prepare(src.path, signature=opts.signature, output_key=opts.output_key,
                    preprocessing=opts.preprocessing, bake_preprocessing=opts.bake_preprocessing,
                    allow_unknown=opts.allow_unknown_model, fuse=opts.fuse,
                    allow_partial_fusion=opts.allow_partial_fusion, trust_model=opts.trust_model,
                    progress=(lambda d, n: progress("prepare", d, n)) if progress else None)
    if opts.max_drop is not None and graph.features:
        raise UsageError("--max-drop measures a top-1 drop: it needs a classifier, not a feature extractor")
    targets = [_with_options(t, opts) for t in targets]
    cal = _calibration(graph, targets, opts, progress,
                       image_budget(model_bytes, graph.preprocessing.size, opts.max_memory, model_factor=factor))
    calib_inputs = graph.model_input(cal.model_ready(graph.preprocessing, graph.baked))
    drop_check = None
    if progress:
        progress("source", 0, 1)
    if opts.max_drop is not None and any(t.quantized for t in targets):
        full = graph.run(calib_inputs)
        drop_check = DropCheck(calib_inputs, full, cal.labels)
        ref = full[:CHECK_IMAGES]
    else:
        ref = graph.run(calib_inputs[:CHECK_IMAGES])
    source_info = SourceInfo(src.ref, src.kind, str(src.path), sha256_tree(src.path), graph.arch, graph.arch_origin,
                             graph.signature_key, graph.output_key)
    results = []
    for i, spec in enumerate(targets):
        if progress:
            progress("target", i, len(targets))
        log.info("converting to %s", spec.name)
        report = (lambda d, n: progress("quantize", d, n)) if progress and spec.calibrated else None
        steps = (lambda name, i=i: progress("target", i, len(targets), name)) if progress else None
        try:
            with conversion_progress(report, steps):
                results.append(_convert_one(spec, graph, cal, calib_inputs, ref, source_info, out, opts, drop_check))
        except ConversionError as e:  # this target failed; the others may not
            log.error("%s", e)
            results.append(ArtifactResult(spec.name, out / spec.name, None, error=str(e)))
        release_freed_memory()
    if progress:
        progress("target", len(targets), len(targets))
    if placement is not None:
        _write_reference(src, source_info.sha256, cal, opts, placement, out)
    return results


def _reference_placement(ropts: ReferenceOptions | None):
    if ropts is None:
        return None
    from xcit_edge.distribute import make_placement, set_precision

    set_precision(ropts.precision)
    return make_placement(ropts.device, tpu=ropts.tpu, zone=ropts.zone, project=ropts.project,
                          replicas=ropts.replicas)


def _write_reference(src, model_sha256: str, cal: CalibrationSet, opts: ConvertOptions, placement,
                     out: Path) -> None:
    """The source's outputs on the calibration images, beside the artifacts (`validate --reference`)."""
    graph = prepare(src.path, signature=opts.signature, output_key=opts.output_key, preprocessing=opts.preprocessing,
                    allow_unknown=True, fuse=False, trust_model=opts.trust_model)  # float input, as written
    ref = run_reference(graph, placement, cal, src.ref, model_sha256, opts.reference.batch_size,
                        opts.reference.precision)
    ref.save(out / REFERENCE_FILE)
    log.info("reference outputs of %d images (%s) written to %s", len(cal), placement.description,
             out / REFERENCE_FILE)
