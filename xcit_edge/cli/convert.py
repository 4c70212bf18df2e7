"""`xcit-edge convert MODEL --target ... --out OUT`: one artifact directory per target, each checked."""

from __future__ import annotations

import json
from pathlib import Path

import click

from xcit_edge.cli import options as opt
from xcit_edge.cli.app import load_tensorflow, main
from xcit_edge.cli.progress import Bars


def _convert_stage(targets: list[str]):
    current = {"target": 0}

    def describe(stage: str, done: int, total: int) -> str:
        if stage == "prepare":
            from xcit_edge.graph import PREPARE_STEPS

            return f"preparing the graph: {PREPARE_STEPS[done]}" if done < total else "graph prepared"
        if stage == "calibration":
            return "calibration images"
        if stage == "source":
            return "the source model on the check images"
        if stage == "quantize":
            return f"quantizing {targets[current['target']]}: calibration images"
        current["target"] = min(done, len(targets) - 1)
        return f"converting {targets[done]}" if done < total else "targets done"

    return describe


def _targets_epilog() -> str:
    """The shipped targets, one line each, for `convert --help` (a pip user has no targets/ folder to read)."""
    from xcit_edge.targets import all_targets

    lines = [f"  {name:20s} {spec.description}" for name, spec in all_targets().items()]
    return "\b\nTargets:\n" + "\n".join(lines)


@main.command(epilog=_targets_epilog())
@click.argument("model")
@opt.options(
    click.option("--target", "target", default="all", show_default=True,
                 help="Target name(s), comma-separated, or 'all' (listed below)."),
    click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for the artifacts."),
    opt.calibration("Images for int8 and the post-conversion check: 'sample', a folder, .npy/.npz, "
                    "or SUBSET@DIR (e.g. imagenet-val-1k@/data/imagenet/val)."),
    opt.LABELS,
    click.option("--calibration-images", type=click.IntRange(min=1), help="Use at most this many calibration images."),
    click.option("--bake-preprocessing", is_flag=True, help="Artifacts take uint8 RGB and normalize inside."),
    opt.SIGNATURE,
    opt.PREPROCESSING,
    opt.weights(),
    click.option("--allow-unknown-model", is_flag=True,
                 help="Convert a model whose structure is no known XCiT variant (see `inspect`)."),
    click.option("--no-tflite-metadata", is_flag=True, help="Do not embed TFLite metadata (MediaPipe needs it)."),
    click.option("--no-fuse", is_flag=True, help="Keep XCA as the source wrote it (no fused attention)."),
    click.option("--allow-partial-fusion", is_flag=True, help="Accept fewer fused XCA blocks than the model's depth."),
    click.option("--inline-functions", is_flag=True, help="ONNX: expand the XCA functions (for readers without "
                 "model-local function support, e.g. OpenVINO's ONNX frontend)."),
    click.option("--max-drop", type=click.FloatRange(min=0), help="int8 targets: keep layers in float until the "
                 "top-1 drop on the calibration images is at most this many points (else the target fails)."),
    click.option("--reference-device", type=click.Choice(["cpu", "gpu", "tpu"]),
                 help="Also run the source on the calibration images there and write OUT/reference.npz."),
    opt.TPU,
    opt.precision("Reference matmul precision (highest: TF32 off, HIGHEST under XLA on TPU)."),
    click.option("--force", is_flag=True,
                 help="Replace artifacts in a non-empty --out (each one only once its replacement is complete)."),
    click.option("--wait", is_flag=True, help="If another run is writing to --out, wait for it instead of failing."),
    opt.MAX_MEMORY,
    opt.TRUST_MODEL,
    opt.as_json("Print {\"artifacts\": [...]} as JSON on stdout."),
)
@click.pass_context
def convert(ctx, model: str, target: str, out: Path, as_json: bool, **kw) -> None:
    """Convert MODEL (SavedModel dir, archive, hub handle or arch name) to TFLite, ONNX and OpenVINO."""
    from xcit_edge.convert import convert as run_convert
    from xcit_edge.source.resolve import check_model_ref
    from xcit_edge.targets import parse_targets

    specs = parse_targets(target)
    check_model_ref(model, kw["weights"])
    load_tensorflow(ctx)
    progress = Bars(ctx.obj.get("quiet", False), _convert_stage([s.name for s in specs]))
    with progress.bar:
        results = run_convert(model, specs, out, _options(kw), progress=progress)
    if as_json:
        click.echo(json.dumps({"artifacts": [r.to_dict() for r in results]}, indent=2))
    else:
        _print_convert_summary(results)
        if kw["reference_device"]:
            _print_reference(out, kw)
    if any(r.error for r in results):
        ctx.exit(1)


def _options(kw: dict):
    """ConvertOptions from the command's options (grouped: preprocessing, reference device)."""
    from xcit_edge.convert import ConvertOptions

    pre = {k: kw[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}
    return ConvertOptions(
        calibration=kw["calibration"], labels_file=kw["labels_file"], calibration_images=kw["calibration_images"],
        signature=kw["signature"], output_key=kw["output_key"], preprocessing=opt.preprocessing_override(**pre),
        bake_preprocessing=kw["bake_preprocessing"], allow_unknown_model=kw["allow_unknown_model"],
        weights=kw["weights"], force=kw["force"], write_tflite_metadata=not kw["no_tflite_metadata"],
        fuse=not kw["no_fuse"], allow_partial_fusion=kw["allow_partial_fusion"],
        inline_functions=kw["inline_functions"], max_drop=kw["max_drop"],
        reference=_reference_options(kw), trust_model=kw["trust_model"], wait=kw["wait"],
        max_memory=opt.max_memory(kw["max_memory"]),
    )


def _reference_options(kw: dict):
    if kw["reference_device"] is None:
        if kw["tpu"] or kw["zone"] or kw["project"]:
            raise click.UsageError("--tpu/--zone/--project need --reference-device tpu")
        return None
    from xcit_edge.reference import ReferenceOptions

    return ReferenceOptions(device=kw["reference_device"], tpu=kw["tpu"], zone=kw["zone"], project=kw["project"],
                            precision=kw["precision"])


def _print_reference(out: Path, kw: dict) -> None:
    from xcit_edge.reference import REFERENCE_FILE, load_reference

    ref_path = out / REFERENCE_FILE
    n = len(load_reference(ref_path).names)
    click.echo(f"reference: {ref_path} ({n} images on {kw['reference_device']}); validate with "
               f"--reference {ref_path} --calibration {kw['calibration'] or 'sample'} --max-images {n}")


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
