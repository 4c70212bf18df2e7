"""`xcit-edge bench ARTIFACT...`: latency, throughput, peak memory and size, each artifact in its runtime."""

from __future__ import annotations

import json
from pathlib import Path

import click

from xcit_edge.cli import options as opt
from xcit_edge.cli.app import main
from xcit_edge.cli.progress import Bars


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@opt.options(
    click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, comma-separated."),
    click.option("--threads", help="Runtime thread counts, comma-separated (default: the usable cores)."),
    click.option("--iterations", type=click.IntRange(min=1), default=30, show_default=True,
                 help="Timed calls per artifact and configuration."),
    click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed calls first."),
    click.option("--turn", type=click.IntRange(min=1), default=5, show_default=True,
                 help="Calls per turn: the artifacts take turns so that machine drift hits all alike."),
    click.option("--no-memory", is_flag=True, help="Skip the peak-memory probes (a child process per artifact)."),
    opt.as_json("Print the results as JSON on stdout."),
)
@click.pass_context
def bench(ctx, artifacts, batches, threads, iterations, warmup, turn, no_memory, as_json):
    """Latency (median, p90), throughput, peak memory and size of ARTIFACTS, each in its own runtime;
    ratios to the first."""
    from xcit_edge.bench import BenchOptions, machine_line, table_rows
    from xcit_edge.bench import bench as run_bench
    from xcit_edge.report import text_table

    options = BenchOptions(batches=opt.counts(batches, "--batch"), iterations=iterations, warmup=warmup, turn=turn,
                           memory=not no_memory)
    if threads is not None:
        options.threads = opt.counts(threads, "--threads")
    progress = Bars(ctx.obj.get("quiet", False))
    with progress.bar:
        result = run_bench(list(artifacts), options, progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"{machine_line(result.machine)}; median of {iterations} calls after {warmup} "
               f"warm-up, artifacts taking turns of {turn}")
    for line in text_table(*table_rows(result.timings)):
        click.echo(line)
