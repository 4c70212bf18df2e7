"""`xcit-edge build ARCH`: an XCiT (seeded or from a checkpoint) written as a SavedModel."""

from __future__ import annotations

import json
from pathlib import Path

import click

from xcit_edge.cli import options as opt
from xcit_edge.cli.app import load_tensorflow, main, status


@main.command()
@click.argument("arch")
@opt.options(
    click.option("--weights", type=click.Path(path_type=Path),
                 help="Official or timm checkpoint (.pth, .safetensors)."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed for random init when no weights are given."),
    click.option("--features", is_flag=True, help="Feature extractor (normed class token) instead of logits."),
    click.option("--img-size", type=int, help="Input resolution (default: the one in the name)."),
    click.option("--out", required=True, type=click.Path(path_type=Path), help="SavedModel directory to write."),
    click.option("--force", is_flag=True, help="Replace a non-empty --out."),
    opt.as_json(),
)
@click.pass_context
def build(ctx, arch, weights, seed, features, img_size, out, force, as_json):
    """Build XCiT ARCH (timm or TF Hub name) and write it as a SavedModel."""
    from xcit_edge.model.build import build as build_model
    from xcit_edge.model.zoo import get_config

    get_config(arch)
    load_tensorflow(ctx)
    with status(ctx, f"building {arch}"):
        res = build_model(arch, out, weights=weights, seed=seed, features=features, img_size=img_size, force=force)
    if as_json:
        click.echo(json.dumps({"path": str(res.path), "arch": res.config.name, "features": res.config.features,
                               "params": res.params, "weights": res.weights}))
    else:
        kind = "features" if res.config.features else "logits"
        click.echo(f"wrote {res.path}: {res.config.name} ({kind}, {res.params:,} parameters, "
                   f"weights: {res.weights['source']})")
