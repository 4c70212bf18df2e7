"""The `xcit-edge` group: logging, the one-line error handling every command gets, TensorFlow loaded late."""

from __future__ import annotations

import logging
import sys
import warnings

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


def status(ctx: click.Context, message: str):
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


def load_tensorflow(ctx: click.Context) -> None:
    """Load TensorFlow with its start-up banner silenced (-v shows it), once a command's arguments are checked.

    TensorFlow takes ~10-20 s to import: a typo'd target or a missing path is reported before that.
    """
    if not ctx.obj.get("verbose"):
        from xcit_edge.util.tfimport import import_tensorflow_quietly

        import_tensorflow_quietly()
