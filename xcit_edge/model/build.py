"""`xcit-edge build`: an XCiT SavedModel from an architecture name (+ optional weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xcit_edge.data.synthetic import CLASSES
from xcit_edge.errors import UsageError
from xcit_edge.model.zoo import FIXTURE, XCiTConfig, get_config
from xcit_edge.util.fs import check_output_dir, sha256_file


@dataclass
class BuildResult:
    path: Path
    config: XCiTConfig
    params: int
    weights: dict


def build_keras(arch: str, weights: Path | None = None, seed: int = 0, features: bool = False,
                img_size: int | None = None):
    """The Keras model and a description of where its weights came from."""
    from xcit_edge.model.weights import load_weights
    from xcit_edge.model.xcit import build_model

    cfg = get_config(arch, features=True if features else None, img_size=img_size)
    if weights is not None and not Path(weights).is_file():
        raise UsageError(f"weights file not found: {weights}")  # before the (slow) build
    model = build_model(cfg, seed=seed)
    if weights is None:
        origin = {"source": "random", "seed": seed}
    else:
        load_weights(model, weights)
        origin = {"source": "checkpoint", "file": Path(weights).name, "sha256": sha256_file(Path(weights))}
    return model, origin


def build(arch: str, out: Path, weights: Path | None = None, seed: int = 0, features: bool = False,
          img_size: int | None = None, force: bool = False, labels: list[str] | None = None) -> BuildResult:
    """Build the model and write it as a SavedModel at `out` (atomically).

    `labels` are recorded class names; the trained fixture gets its synthetic class names.
    """
    from xcit_edge.model.savedmodel import export_saved_model, model_metadata
    from xcit_edge.model.xcit import count_params

    out = Path(out)
    check_output_dir(out, force)  # fail fast, before minutes of model building
    model, origin = build_keras(arch, weights, seed, features, img_size)
    if labels is None and model.cfg.name == FIXTURE.name and not model.cfg.features:
        labels = list(CLASSES)
    export_saved_model(model, out, model_metadata(model.cfg, origin, labels=labels), force=force)
    return BuildResult(out, model.cfg, count_params(model), origin)
