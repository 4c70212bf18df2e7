"""`xcit-edge inspect MODEL`: what a SavedModel is, read from its protobuf (the graph never runs)."""

from __future__ import annotations

import json

import click

from xcit_edge.cli import options as opt
from xcit_edge.cli.app import load_tensorflow, main, status


@main.command()
@click.argument("model")
@opt.options(opt.weights(), opt.as_json())
@click.pass_context
def inspect(ctx, model, weights, as_json):
    """Describe MODEL: signatures, layout, XCiT variant, parameters, preprocessing."""
    from xcit_edge.data.preprocessing import Preprocessing
    from xcit_edge.source.inspect import inspect_model
    from xcit_edge.source.resolve import check_model_ref, resolve

    check_model_ref(model, weights)
    load_tensorflow(ctx)
    with status(ctx, f"resolving {model}"):
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
    click.echo(f"preprocessing: {Preprocessing.from_dict(info.preprocessing).describe()} ({info.preprocessing_origin})")
