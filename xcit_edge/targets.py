"""Target specs: declarative TOML files in `targets/` (backend + precision + policy + tolerances).

A target is a backend with settings; a new precision of an existing backend is a new TOML
file, not new code. Specs are data from the package, validated on load so a typo in a spec
fails with the file name rather than deep in a converter.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from xcit_edge import backends
from xcit_edge.backends.base import QuantMode
from xcit_edge.data.resources import data_dir
from xcit_edge.errors import SpecError, UsageError, did_you_mean

TOLERANCE_KEYS = ("min_cosine", "min_top1_agreement", "max_top1_drop", "min_nn_agreement")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    backend: str
    precision: str
    description: str
    file: str
    quantization: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    tolerances: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.quantization.get("mode", "none")

    @property
    def quant_mode(self) -> QuantMode:
        """The backend's description of this spec's mode (checked to exist when the spec is parsed)."""
        return next(m for m in backends.backend(self.backend).MODES if m.name == self.mode)

    @property
    def quantized(self) -> bool:
        """Integer-quantized (calibration images decoded, checks are statistical)."""
        return self.quant_mode.integer

    @property
    def calibrated(self) -> bool:
        """Quantized with activation ranges measured on calibration images (not per input at run time)."""
        return self.quant_mode.calibrated

    def to_dict(self) -> dict:
        return asdict(self)


def _parse(path: Path) -> TargetSpec:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"target spec {path}: {e}") from e
    missing = [k for k in ("name", "backend", "precision", "file") if k not in raw]
    if missing:
        raise SpecError(f"target spec {path}: missing {', '.join(missing)}")
    spec = TargetSpec(
        name=str(raw["name"]), backend=str(raw["backend"]), precision=str(raw["precision"]),
        description=str(raw.get("description", "")), file=str(raw["file"]),
        quantization=dict(raw.get("quantization", {})), options=dict(raw.get("options", {})),
        tolerances=dict(raw.get("tolerances", {})),
    )
    if spec.name != path.stem:
        raise SpecError(f"target spec {path}: name {spec.name!r} differs from the file name")
    try:
        modes = [m.name for m in backends.backend(spec.backend).MODES]
    except SpecError as e:
        raise SpecError(f"target spec {path}: {e}") from e
    if spec.mode not in modes:
        raise SpecError(f"target spec {path}: quantization mode {spec.mode!r} is not one of "
                        f"{', '.join(modes)} for {spec.backend}")
    unknown = set(spec.tolerances) - set(TOLERANCE_KEYS)
    if unknown:
        raise SpecError(f"target spec {path}: unknown tolerance(s) {', '.join(sorted(unknown))}")
    return spec


@cache
def all_targets() -> dict[str, TargetSpec]:
    """Every shipped target spec by name, in name order."""
    return {p.stem: _parse(p) for p in sorted(data_dir("targets").glob("*.toml"))}


def parse_targets(text: str) -> list[TargetSpec]:
    """`all` or a comma-separated list of target names, each known."""
    known = all_targets()
    names = list(known) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UsageError("no target given; use --target NAME[,NAME...] or --target all")
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"unknown target {bad[0]!r}{did_you_mean(bad[0], known)}; known: {', '.join(known)} (or all)")
    return [known[n] for n in dict.fromkeys(names)]
