"""`xcit-edge validate ARTIFACT... --source MODEL | --reference REF`: each artifact held to its target."""

from __future__ import annotations

import json
from pathlib import Path

import click

from xcit_edge.cli import options as opt
from xcit_edge.cli.app import load_tensorflow, main
from xcit_edge.cli.progress import Bars, run_stage


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@opt.options(
    click.option("--source", help="The source model (SavedModel dir, archive, hub handle or arch name)."),
    click.option("--reference", type=click.Path(path_type=Path),
                 help="Stored reference outputs (xcit-edge reference)."),
    opt.calibration("Images to validate on: 'sample', a folder, .npy/.npz, SUBSET@DIR.", required=True),
    opt.LABELS,
    opt.MAX_IMAGES,
    opt.weights("--source"),
    click.option("--no-localize", is_flag=True, help="Do not look for the first diverging XCA block of a failure."),
    click.option("--report", "report_dir", type=click.Path(path_type=Path),
                 help="Write report.md/.json/.html here."),
    opt.MAX_MEMORY,
    opt.TRUST_MODEL,
    opt.as_json("Print the full result as JSON on stdout."),
)
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
                           max_memory=opt.max_memory(max_memory))
    for a in artifacts:
        require_artifact(a)
    if source:
        check_model_ref(source, weights)
    load_tensorflow(ctx)
    progress = Bars(ctx.obj.get("quiet", False), run_stage)
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
