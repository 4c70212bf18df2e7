"""The `xcit-edge` command line: parse, call the library, print. No logic lives here.

Exit codes: 0 success, 1 some target failed to convert or to run, 2 bad input or usage (one
line on stderr, no traceback), 70 internal error (rerun with --debug for the traceback),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import click

from xcit_edge import __version__
from xcit_edge.errors import XcitEdgeError, first_line

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """Turns library errors into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        from xcit_edge.util.interrupt import guard

        try:
            with guard():
                return super().invoke(ctx)
        except XcitEdgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except MemoryError:
            click.echo("error: out of memory (convert, validate and reference estimate what they need before "
                       "starting: see --max-memory)", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (interrupt.Interrupted): temps already removed
            click.echo("error: interrupted", err=True)
            ctx.exit(getattr(e, "exit_code", EXIT_INTERRUPTED))
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug for the traceback)",
                       err=True)
            ctx.exit(EXIT_INTERNAL)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    if quiet:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("tensorflow", "absl", "h5py", "tf2onnx", "nncf"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    if not verbose:  # converter deprecation chatter, not the user's business (-v shows it)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(tensorflow|tf2onnx|onnxruntime|nncf)\b")


def _status(ctx: click.Context, message: str):
    """A rich spinner on stderr (silent under --quiet or when stderr is not a terminal)."""
    from rich.console import Console

    console = Console(stderr=True, quiet=ctx.obj.get("quiet", False))
    return console.status(message)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="xcit-edge")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """XCiT image models to TFLite, ONNX and OpenVINO: converted, fused and validated."""
    ctx.ensure_object(dict)
    ctx.obj.update(verbose=verbose, quiet=quiet, debug=debug)
    _setup_logging(verbose, quiet)


def _tensorflow(ctx: click.Context) -> None:
    """Load TensorFlow with its start-up banner silenced (-v shows it), once a command's arguments are checked.

    TensorFlow takes ~10-20 s to import: a typo'd target or a missing path is reported before that.
    """
    if not ctx.obj.get("verbose"):
        from xcit_edge.util.tfimport import import_tensorflow_quietly

        import_tensorflow_quietly()


@main.command()
@click.argument("arch")
@click.option("--weights", type=click.Path(path_type=Path), help="Official or timm checkpoint (.pth, .safetensors).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no weights are given.")
@click.option("--features", is_flag=True, help="Feature extractor (normed class token) instead of logits.")
@click.option("--img-size", type=int, help="Input resolution (default: the one in the name).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="SavedModel directory to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def build(ctx, arch, weights, seed, features, img_size, out, force, as_json):
    """Build XCiT ARCH (timm or TF Hub name) and write it as a SavedModel."""
    from xcit_edge.model.build import build as build_model
    from xcit_edge.model.zoo import get_config

    get_config(arch)
    _tensorflow(ctx)
    with _status(ctx, f"building {arch}"):
        res = build_model(arch, out, weights=weights, seed=seed, features=features, img_size=img_size, force=force)
    if as_json:
        click.echo(json.dumps({"path": str(res.path), "arch": res.config.name, "features": res.config.features,
                               "params": res.params, "weights": res.weights}))
    else:
        kind = "features" if res.config.features else "logits"
        click.echo(f"wrote {res.path}: {res.config.name} ({kind}, {res.params:,} parameters, "
                   f"weights: {res.weights['source']})")


@main.command()
@click.argument("model")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint, when MODEL is an architecture name.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def inspect(ctx, model, weights, as_json):
    """Describe MODEL: signatures, layout, XCiT variant, parameters, preprocessing."""
    from xcit_edge.source.inspect import inspect_model
    from xcit_edge.source.resolve import check_model_ref, resolve

    check_model_ref(model, weights)
    _tensorflow(ctx)
    with _status(ctx, f"resolving {model}"):
        info = inspect_model(resolve(model, weights=weights).path)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2))
        return
    click.echo(f"model:         {info.path}")
    for sig in info.signatures:
        click.echo(f"signature:     {sig.key}")
        for t in sig.inputs:
            click.echo(f"  input        {t.describe()}")
        for t in sig.outputs:
            click.echo(f"  output       {t.describe()}")
    click.echo(f"input layout:  {info.layout}")
    click.echo(f"XCiT variant:  {info.variant or 'unknown'} ({info.variant_origin})")
    click.echo(f"parameters:    {info.params:,} ({info.params_origin})")
    from xcit_edge.data.preprocessing import Preprocessing

    click.echo(f"preprocessing: {Preprocessing.from_dict(info.preprocessing).describe()} ({info.preprocessing_origin})")


def _preprocessing_override(size, mean, std, interpolation, crop_pct):
    """A Preprocessing from flags (foreign models), or None when no flag is given."""
    if not any(v is not None for v in (size, mean, std, interpolation, crop_pct)):
        return None
    from xcit_edge.data.preprocessing import Preprocessing
    from xcit_edge.model.zoo import IMAGENET_MEAN, IMAGENET_STD

    def triple(text, default):
        if text is None:
            return default
        parts = [float(v) for v in text.split(",")]
        if len(parts) != 3:
            raise click.BadParameter(f"{text!r}: give three comma-separated numbers")
        return tuple(parts)

    if size is None:
        raise click.BadParameter("--input-size is required with other preprocessing flags")
    return Preprocessing(size=(size, size), interpolation=interpolation or "bicubic", crop_pct=crop_pct or 1.0,
                         mean=triple(mean, IMAGENET_MEAN), std=triple(std, IMAGENET_STD))


_TRUST_HELP = ("Run a model whose graph touches files, the network or the Python process (refused otherwise; "
               "a warning names what it contains).")
_MAX_MEMORY = click.option("--max-memory", help="Memory the run may use (e.g. 8G); refused up front, with the "
                           "estimate, if it needs more. Default: what the machine has available.")


class _Bars:
    """Progress on stderr: rich bars on a terminal; off one (CI logs, `2>log`) one plain line per step, so a
    long phase is never minutes of silence; nothing under --quiet."""

    def __init__(self, quiet: bool, describe=None, tty: bool | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        tty = sys.stderr.isatty() if tty is None else tty
        self.describe = describe or (lambda stage, done, total: stage)
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True, quiet=quiet or not tty),
                            transient=False)
        self.tasks: dict[str, int] = {}
        self.lines = not quiet and not tty
        self.last: tuple[str, str, bool] | None = None
        self.start = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        desc = self.describe(stage, done, total)
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(desc, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total, description=desc)
        if self.lines:
            self._line(stage, desc, done, total)

    def _line(self, stage: str, desc: str, done: int, total: int) -> None:
        """One line when the step changes and when a stage completes (not one per calibration image)."""
        key = (stage, desc, done >= total)
        if key == self.last:
            return
        self.last = key
        elapsed = int(time.monotonic() - self.start)
        click.echo(f"[{elapsed // 60}:{elapsed % 60:02d}] {desc} ({done}/{total})", err=True)


def _convert_stage(targets: list[str]):
    def describe(stage: str, done: int, total: int) -> str:
        if stage == "calibration":
            return "calibration images"
        return f"converting {targets[done]}" if done < total else "targets done"

    return describe


def _targets_epilog() -> str:
    """The shipped targets, one line each, for `convert --help` (a pip user has no targets/ folder to read)."""
    from xcit_edge.targets import all_targets

    lines = [f"  {name:20s} {spec.description}" for name, spec in all_targets().items()]
    return "\b\nTargets:\n" + "\n".join(lines)


@main.command(epilog=_targets_epilog())
@click.argument("model")
@click.option("--target", "target", default="all", show_default=True,
              help="Target name(s), comma-separated, or 'all' (listed below).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for the artifacts.")
@click.option("--calibration", help="Images for int8 and the post-conversion check: 'sample', a folder, .npy/.npz, "
              "or SUBSET@DIR (e.g. imagenet-val-1k@/data/imagenet/val).")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Labels for a plain image folder.")
@click.option("--calibration-images", type=click.IntRange(min=1), help="Use at most this many calibration images.")
@click.option("--bake-preprocessing", is_flag=True, help="Artifacts take uint8 RGB and normalize inside.")
@click.option("--signature", help="SavedModel signature (default: serving_default or the only one).")
@click.option("--output-key", help="Signature output to convert, when there are several.")
@click.option("--input-size", type=int, help="Foreign models: input resolution for preprocessing.")
@click.option("--mean", help="Foreign models: normalization mean, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Foreign models: normalization std, e.g. 0.229,0.224,0.225.")
@click.option("--interpolation", type=click.Choice(["bicubic", "bilinear", "nearest"]), help="Resize filter.")
@click.option("--crop-pct", type=float, help="Centre-crop fraction (1.0: resize only).")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint, when MODEL is an architecture name.")
@click.option("--allow-unknown-model", is_flag=True,
              help="Convert a model whose structure is no known XCiT variant (see `inspect`).")
@click.option("--no-tflite-metadata", is_flag=True, help="Do not embed TFLite metadata (MediaPipe needs it).")
@click.option("--no-fuse", is_flag=True, help="Keep XCA as the source wrote it (no fused attention).")
@click.option("--allow-partial-fusion", is_flag=True, help="Accept fewer fused XCA blocks than the model's depth.")
@click.option("--inline-functions", is_flag=True, help="ONNX: expand the XCA functions (for readers without "
              "model-local function support, e.g. OpenVINO's ONNX frontend).")
@click.option("--max-drop", type=click.FloatRange(min=0), help="int8 targets: keep layers in float until the top-1 "
              "drop on the calibration images is at most this many points (else the target fails).")
@click.option("--reference-device", type=click.Choice(["cpu", "gpu", "tpu"]),
              help="Also run the source on the calibration images there and write OUT/reference.npz.")
@click.option("--tpu", help="With --reference-device tpu: the TPU name (default 'local').")
@click.option("--zone", help="TPU zone (named TPUs).")
@click.option("--project", help="TPU project (named TPUs).")
@click.option("--precision", type=click.Choice(["default", "highest"]), default="default", show_default=True,
              help="Reference matmul precision (highest: TF32 off, HIGHEST under XLA on TPU).")
@click.option("--force", is_flag=True,
              help="Replace artifacts in a non-empty --out (each one only once its replacement is complete).")
@click.option("--wait", is_flag=True, help="If another run is writing to --out, wait for it instead of failing.")
@_MAX_MEMORY
@click.option("--trust-model", is_flag=True, help=_TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print {\"artifacts\": [...]} as JSON on stdout.")
@click.pass_context
def convert(ctx, model, target, out, calibration, labels_file, calibration_images, bake_preprocessing, signature,
            output_key, input_size, mean, std, interpolation, crop_pct, weights, allow_unknown_model,
            no_tflite_metadata, no_fuse, allow_partial_fusion, inline_functions, max_drop, reference_device, tpu,
            zone, project, precision, force, wait, max_memory, trust_model, as_json):
    """Convert MODEL (SavedModel dir, archive, hub handle or arch name) to TFLite, ONNX and OpenVINO."""
    from xcit_edge.convert import ConvertOptions
    from xcit_edge.convert import convert as run_convert
    from xcit_edge.source.resolve import check_model_ref
    from xcit_edge.targets import parse_targets

    specs = parse_targets(target)
    check_model_ref(model, weights)
    _tensorflow(ctx)
    opts = ConvertOptions(
        calibration=calibration, labels_file=labels_file, calibration_images=calibration_images,
        signature=signature, output_key=output_key,
        preprocessing=_preprocessing_override(input_size, mean, std, interpolation, crop_pct),
        bake_preprocessing=bake_preprocessing, allow_unknown_model=allow_unknown_model, weights=weights,
        force=force, write_tflite_metadata=not no_tflite_metadata, fuse=not no_fuse,
        allow_partial_fusion=allow_partial_fusion, inline_functions=inline_functions, max_drop=max_drop,
        reference=_reference_options(reference_device, tpu, zone, project, precision), trust_model=trust_model,
        wait=wait, max_memory=_max_memory(max_memory),
    )
    progress = _Bars(ctx.obj.get("quiet", False), _convert_stage([s.name for s in specs]))
    with progress.bar:
        results = run_convert(model, specs, out, opts, progress=progress)
    failed = [r for r in results if r.error]
    if as_json:
        click.echo(json.dumps({"artifacts": [r.to_dict() for r in results]}, indent=2))
    else:
        _print_convert_summary(results)
        if reference_device:
            from xcit_edge.reference import REFERENCE_FILE, load_reference

            ref_path = out / REFERENCE_FILE
            n = len(load_reference(ref_path).names)
            click.echo(f"reference: {ref_path} ({n} images on {reference_device}); validate with "
                       f"--reference {ref_path} --calibration {calibration or 'sample'} --max-images {n}")
    if failed:
        ctx.exit(1)


def _max_memory(text: str | None) -> int | None:
    from xcit_edge.util.memory import parse_size

    return parse_size(text) if text else None


def _reference_options(device, tpu, zone, project, precision):
    if device is None:
        if tpu or zone or project:
            raise click.UsageError("--tpu/--zone/--project need --reference-device tpu")
        return None
    from xcit_edge.reference import ReferenceOptions

    return ReferenceOptions(device=device, tpu=tpu, zone=zone, project=project, precision=precision)


def _convert_row(r) -> list[str]:
    """One artifact's cells: target, path, size, XCA, cosine, agreement, verdict."""
    m = r.manifest
    if r.error or m is None:
        return [r.target, f"FAILED: {r.error}"]
    c = m.check
    verdict = "ok" if not c.failures else "CHECK: " + "; ".join(c.failures)
    fused = f"XCA fused {m.xca.in_artifact}/{m.xca.expected}" if m.xca.enabled else "XCA not fused"
    if md := m.max_drop:  # measured on every calibration image: supersedes the quick check
        verdict = (f"ok: drop {md.measured_drop:.2f} <= {md.max_drop:g} on {md.basis.split(' on ')[-1]} "
                   f"({len(md.kept_nodes)} layers kept in float, {md.method})")
    agree = (f"top-1 agreement {c['top1_agreement']:.3f}" if "top1_agreement" in c.metrics
             else f"NN agreement {c.get('nn_agreement', float('nan')):.3f}")
    return [r.target, str(r.path), f"{m.file_bytes / 1e6:.2f} MB", fused, f"cosine {c['cosine_mean']:.6f}",
            f"{agree} ({c.images} images)", verdict]


def _print_convert_summary(results) -> None:
    """One line per artifact, columns aligned (a failed target's line is its name and its error)."""
    rows = [_convert_row(r) for r in results]
    full = [row for row in rows if len(row) > 2]
    widths = [max(len(row[k]) for row in full) for k in range(7)] if full else []
    name_width = max((len(row[0]) for row in rows), default=0)
    for row in rows:
        if len(row) == 2:
            click.echo(f"{row[0]:{name_width}s}  {row[1]}")
            continue
        cells = [row[0].ljust(name_width), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                 *(cell.ljust(w) for cell, w in zip(row[3:6], widths[3:6], strict=True)), row[6]]
        click.echo("  ".join(cells))


def _validate_stage(stage: str, done: int, total: int) -> str:
    return {"calibration": "calibration images", "reference": "source model"}.get(stage, f"running {stage}")


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--source", help="The source model (SavedModel dir, archive, hub handle or arch name).")
@click.option("--reference", type=click.Path(path_type=Path), help="Stored reference outputs (xcit-edge reference).")
@click.option("--calibration", required=True, help="Images to validate on: 'sample', a folder, .npy/.npz, SUBSET@DIR.")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Labels for a plain image folder.")
@click.option("--max-images", type=click.IntRange(min=1), help="Use at most this many images (spread over the set).")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint, when --source is an architecture name.")
@click.option("--no-localize", is_flag=True, help="Do not look for the first diverging XCA block of a failure.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), help="Write report.md/.json/.html here.")
@_MAX_MEMORY
@click.option("--trust-model", is_flag=True, help=_TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON on stdout.")
@click.pass_context
def validate(ctx, artifacts, source, reference, calibration, labels_file, max_images, weights, no_localize,
             report_dir, max_memory, trust_model, as_json):
    """Run ARTIFACTS (convert's output directories) against the source model; exit 1 if any misses its target."""
    from xcit_edge.artifact.open import require_artifact
    from xcit_edge.source.resolve import check_model_ref
    from xcit_edge.validate import ValidateOptions
    from xcit_edge.validate import validate as run_validate

    opts = ValidateOptions(source=source, reference=reference, calibration=calibration, labels_file=labels_file,
                           max_images=max_images, weights=weights, localize=not no_localize, trust_model=trust_model,
                           max_memory=_max_memory(max_memory))
    for a in artifacts:
        require_artifact(a)
    if source:
        check_model_ref(source, weights)
    _tensorflow(ctx)
    progress = _Bars(ctx.obj.get("quiet", False), _validate_stage)
    with progress.bar:
        result = run_validate(list(artifacts), opts, progress=progress)
    if report_dir:
        from xcit_edge.report import write_report

        write_report(result, report_dir)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_validation(result, report_dir)
    if not result.passed:
        ctx.exit(1)


def _print_validation(result, report_dir) -> None:
    from xcit_edge.report import failure_lines, summary_lines, table_rows, text_table

    for line in summary_lines(result):
        click.echo(line)
    for line in text_table(*table_rows(result)):
        click.echo(line)
    for a in result.artifacts:
        if not a.passed:
            for line in failure_lines(a):
                click.echo(f"FAIL {line}")
    if report_dir:
        click.echo(f"report: {Path(report_dir) / 'report.html'}")


@main.command()
@click.argument("model")
@click.option("--calibration", required=True, help="Images: 'sample', a folder, .npy/.npz, SUBSET@DIR.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Reference file to write (.npz).")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Labels for a plain image folder.")
@click.option("--max-images", type=click.IntRange(min=1), help="Use at most this many images (spread over the set).")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint, when MODEL is an architecture name.")
@click.option("--signature", help="SavedModel signature (default: serving_default or the only one).")
@click.option("--output-key", help="Signature output, when there are several.")
@click.option("--device", type=click.Choice(["cpu", "gpu", "tpu"]), default="cpu", show_default=True,
              help="Where the source model runs (one tf.distribute code path; only the strategy differs).")
@click.option("--tpu", help="TPU name (default with --device tpu: 'local', the TPU VM this runs on).")
@click.option("--zone", help="TPU zone (named TPUs).")
@click.option("--project", help="TPU project (named TPUs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Global batch (rounded up to a multiple of the replicas; the last batch is padded).")
@click.option("--precision", type=click.Choice(["default", "highest"]), default="default", show_default=True,
              help="highest: full float32 matmuls (TF32 off: HIGHEST precision under XLA on TPU).")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="--device cpu: split the host CPU into this many logical devices (the distributed path).")
@_MAX_MEMORY
@click.option("--trust-model", is_flag=True, help=_TRUST_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
@click.pass_context
def reference(ctx, model, calibration, out, labels_file, max_images, weights, signature, output_key, device, tpu,
              zone, project, batch_size, precision, replicas, max_memory, trust_model, as_json):
    """Run MODEL on the calibration images (CPU, GPUs or a Cloud TPU) and store its outputs for validate."""
    from xcit_edge.reference import ReferenceOptions, compute_reference
    from xcit_edge.source.resolve import check_model_ref

    check_model_ref(model, weights)

    opts = ReferenceOptions(device=device, tpu=tpu, zone=zone, project=project, batch_size=batch_size,
                            precision=precision, replicas=replicas, trust_model=trust_model,
                            max_memory=_max_memory(max_memory))
    _tensorflow(ctx)
    progress = _Bars(ctx.obj.get("quiet", False), _validate_stage)
    with progress.bar:
        ref = compute_reference(model, calibration, labels_file=labels_file, max_images=max_images, weights=weights,
                                signature=signature, output_key=output_key, options=opts, progress=progress)
    ref.save(out)
    info = {"path": str(out), "images": len(ref.names), "kind": ref.kind, "outputs": list(ref.outputs.shape),
            "model_sha256": ref.model_sha256, "calibration_digest": ref.calibration_digest, **ref.provenance()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"wrote {out}: {info['images']} images, {ref.kind} {info['outputs']}, on {info['placement']} "
                   f"(precision {precision}, TensorFlow {info['tensorflow']})")


def _counts(value: str | None, what: str) -> tuple[int, ...] | None:
    """'1,8' -> (1, 8); a bad list is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{value!r}: give positive integers, comma-separated", param_hint=what)
    return counts


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", help="Runtime thread counts, comma-separated (default: the usable cores).")
@click.option("--iterations", type=click.IntRange(min=1), default=30, show_default=True,
              help="Timed calls per artifact and configuration.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed calls first.")
@click.option("--turn", type=click.IntRange(min=1), default=5, show_default=True,
              help="Calls per turn: the artifacts take turns so that machine drift hits all alike.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory probes (a child process per artifact).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.pass_context
def bench(ctx, artifacts, batches, threads, iterations, warmup, turn, no_memory, as_json):
    """Latency (median, p90), throughput, peak memory and size of ARTIFACTS, each in its own runtime;
    ratios to the first."""
    from xcit_edge.bench import BenchOptions, machine_line, table_rows
    from xcit_edge.bench import bench as run_bench
    from xcit_edge.report import text_table

    opts = BenchOptions(batches=_counts(batches, "--batch"), iterations=iterations, warmup=warmup, turn=turn,
                        memory=not no_memory)
    if threads is not None:
        opts.threads = _counts(threads, "--threads")
    progress = _Bars(ctx.obj.get("quiet", False))
    with progress.bar:
        result = run_bench(list(artifacts), opts, progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"{machine_line(result.machine)}; median of {iterations} calls after {warmup} "
               f"warm-up, artifacts taking turns of {turn}")
    for line in text_table(*table_rows(result.timings)):
        click.echo(line)


if __name__ == "__main__":
    main()
