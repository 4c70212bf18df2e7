"""Options several commands share, declared once (`--weights`, `--json`, `--max-memory`, ...), and their parsing.

Each constant is a decorator; `options(...)` applies several in the order they are listed, which is the
order `--help` shows them in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

Decorator = Callable[[Callable], Callable]


def options(*decorators: Decorator) -> Decorator:
    """Apply `decorators` so that `--help` lists their options in the order given."""
    def apply(fn: Callable) -> Callable:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


def weights(what: str = "MODEL") -> Decorator:
    return click.option("--weights", type=click.Path(path_type=Path),
                        help=f"Checkpoint (.pth, .safetensors), when {what} is an architecture name.")


def as_json(help_text: str = "Print the result as JSON on stdout.") -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def calibration(help_text: str, required: bool = False) -> Decorator:
    return click.option("--calibration", required=required, help=help_text)


LABELS = click.option("--labels", "labels_file", type=click.Path(path_type=Path),
                      help="Labels for a plain image folder.")
MAX_IMAGES = click.option("--max-images", type=click.IntRange(min=1),
                          help="Use at most this many images (spread over the set).")
MAX_MEMORY = click.option("--max-memory", help="Memory the run may use (e.g. 8G); refused up front, with the "
                          "estimate, if it needs more. Default: what the machine has available.")
TRUST_MODEL = click.option("--trust-model", is_flag=True,
                           help="Run a model whose graph touches files, the network or the Python process "
                                "(refused otherwise; a warning names what it contains).")
SIGNATURE = options(
    click.option("--signature", help="SavedModel signature (default: serving_default or the only one)."),
    click.option("--output-key", help="Signature output, when there are several."),
)
TPU = options(
    click.option("--tpu", help="TPU name (default with a TPU device: 'local', the TPU VM this runs on)."),
    click.option("--zone", help="TPU zone (named TPUs)."),
    click.option("--project", help="TPU project (named TPUs)."),
)
PREPROCESSING = options(
    click.option("--input-size", type=int, help="Foreign models: input resolution for preprocessing."),
    click.option("--mean", help="Foreign models: normalization mean, e.g. 0.485,0.456,0.406."),
    click.option("--std", help="Foreign models: normalization std, e.g. 0.229,0.224,0.225."),
    click.option("--interpolation", type=click.Choice(["bicubic", "bilinear", "nearest"]), help="Resize filter."),
    click.option("--crop-pct", type=float, help="Centre-crop fraction (1.0: resize only)."),
)


def precision(help_text: str) -> Decorator:
    return click.option("--precision", type=click.Choice(["default", "highest"]), default="default",
                        show_default=True, help=help_text)


def max_memory(text: str | None) -> int | None:
    """`--max-memory 8G` in bytes (None: not given)."""
    from xcit_edge.util.memory import parse_size

    return parse_size(text) if text else None


def counts(value: str | None, what: str) -> tuple[int, ...] | None:
    """'1,8' -> (1, 8); a bad list is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        parsed = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        parsed = ()
    if not parsed or min(parsed) < 1:
        raise click.BadParameter(f"{value!r}: give positive integers, comma-separated", param_hint=what)
    return parsed


def preprocessing_override(input_size, mean, std, interpolation, crop_pct):
    """A Preprocessing from the PREPROCESSING flags (foreign models), or None when no flag is given."""
    if not any(v is not None for v in (input_size, mean, std, interpolation, crop_pct)):
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

    if input_size is None:
        raise click.BadParameter("--input-size is required with other preprocessing flags")
    return Preprocessing(size=(input_size, input_size), interpolation=interpolation or "bicubic",
                         crop_pct=crop_pct or 1.0, mean=triple(mean, IMAGENET_MEAN), std=triple(std, IMAGENET_STD))
