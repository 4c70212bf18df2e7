"""The `xcit-edge` command line: parse, call the library, print. No logic lives here.

Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback),
70 internal error (rerun with --debug for the traceback), 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from xcit_edge import __version__
from xcit_edge.errors import XcitEdgeError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """Turns library errors into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except XcitEdgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(f"internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", err=True)
            ctx.exit(EXIT_INTERNAL)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    if quiet:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))


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
    if ctx.invoked_subcommand and not verbose:
        from xcit_edge.tfimport import import_tensorflow_quietly

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
    from xcit_edge.build import build as build_model

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
    from xcit_edge.inspection import inspect_model
    from xcit_edge.source import resolve

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
    from xcit_edge.preprocessing import Preprocessing

    click.echo(f"preprocessing: {Preprocessing.from_dict(info.preprocessing).describe()} ({info.preprocessing_origin})")


if __name__ == "__main__":
    main()
