"""Typed records that travel between stages and into the manifest (frozen dataclasses; dicts only at JSON).

Every record has `to_dict()` (its JSON form, the manifest's layout) and `from_dict(d, where)` for reading it
back from an untrusted file: each field is checked for presence and type there, so a hand-edited or
truncated manifest is one clear error naming the field (`RecordError`, a UsageError), not a KeyError later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from xcit_edge.errors import UsageError


class RecordError(UsageError):
    """A recorded document (a manifest) lacks a field or has one of the wrong type."""


class Fields:
    """Typed access to one JSON object of an untrusted document; errors name the field's dotted path."""

    def __init__(self, obj: object, where: str, prefix: str = ""):
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: manifest field {prefix.rstrip('.') or 'document'} is not an object")
        self.obj, self.where, self.prefix = obj, where, prefix

    def _get(self, key: str, kinds: tuple[type, ...], optional: bool) -> Any:
        value = self.obj.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise RecordError(f"{self.where}: manifest field {self.prefix}{key} is missing or not {names}")
        return value

    def string(self, key: str, optional: bool = False) -> str | None:
        return self._get(key, (str,), optional)

    def text(self, key: str, default: str = "") -> str:
        """An optional string field (absent or null: `default`)."""
        value = self.string(key, optional=True)
        return default if value is None else value

    def integer(self, key: str, optional: bool = False) -> int | None:
        return self._get(key, (int,), optional)

    def number(self, key: str, optional: bool = False) -> float | None:
        value = self._get(key, (int, float), optional)
        return None if value is None else float(value)

    def boolean(self, key: str, optional: bool = False) -> bool | None:
        return self._get(key, (bool,), optional)

    def mapping(self, key: str, optional: bool = False) -> dict | None:
        return self._get(key, (dict,), optional)

    def sub(self, key: str) -> Fields:
        return Fields(self._get(key, (dict,), False), self.where, f"{self.prefix}{key}.")

    def items(self, key: str, optional: bool = False) -> list | None:
        return self._get(key, (list,), optional)

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.items(key)
        if not all(isinstance(s, str) for s in items):
            raise RecordError(f"{self.where}: manifest field {self.prefix}{key} is not a list of strings")
        return tuple(items)

    def integers(self, key: str) -> tuple[int, ...]:
        items = self.items(key)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in items):
            raise RecordError(f"{self.where}: manifest field {self.prefix}{key} is not a list of integers")
        return tuple(items)


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact: its name inside the directory, sha256 and size."""

    file: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object, where: str) -> FileEntry:
        f = Fields(d, where, "artifact.files[].")
        return cls(f.string("file"), f.string("sha256"), f.integer("bytes"))


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of the artifact: name, dtype, shape (-1: dynamic); the input's layout
    (preprocessing.LAYOUTS) or the output's kind (logits, features)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    layout: str | None = None
    layout_origin: str | None = None
    kind: str | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        extra = {"layout": self.layout, "layout_origin": self.layout_origin, "kind": self.kind}
        return {**d, **{k: v for k, v in extra.items() if v is not None}}

    @classmethod
    def from_dict(cls, f: Fields) -> TensorInfo:
        return cls(f.text("name"), f.text("dtype", "float32"), f.integers("shape"), f.string("layout", optional=True),
                   f.string("layout_origin", optional=True), f.string("kind", optional=True))


@dataclass(frozen=True)
class IOContract:
    """What the artifact takes and gives (one input, one output)."""

    input: TensorInfo
    output: TensorInfo

    def to_dict(self) -> dict:
        return {"input": self.input.to_dict(), "output": self.output.to_dict()}

    @classmethod
    def from_dict(cls, f: Fields) -> IOContract:
        from xcit_edge.data.preprocessing import LAYOUTS

        io = cls(TensorInfo.from_dict(f.sub("input")), TensorInfo.from_dict(f.sub("output")))
        if (io.input.layout or "NHWC") not in LAYOUTS:
            raise RecordError(f"{f.where}: manifest field io.input.layout {str(io.input.layout)[:20]!r} is none of "
                              f"{', '.join(LAYOUTS)}")
        return io

    @property
    def output_kind(self) -> str:
        return self.output.kind or "logits"


@dataclass(frozen=True)
class SourceInfo:
    """The model an artifact was converted from: the MODEL argument, where it was, its tree hash, variant."""

    model: str
    kind: str
    path: str
    sha256: str
    arch: str | None = None
    arch_origin: str = ""
    signature: str = ""
    output_key: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, f: Fields) -> SourceInfo:
        return cls(f.text("model"), f.text("kind"), f.text("path"), f.text("sha256"), f.string("arch", optional=True),
                   f.text("arch_origin"), f.text("signature"), f.text("output_key"))


@dataclass(frozen=True)
class XcaRecord:
    """XCA fusion: `expected` blocks (from the variant or the structure), `fused` in the graph, and once an
    artifact is written, `in_artifact` (read back by its backend) and `form` (graph, function, inlined)."""

    enabled: bool
    expected: int
    fused: int = 0
    expected_from: str = ""
    found: int = 0
    skipped: Mapping[str, str] = field(default_factory=dict)
    max_rel_err: float = 0.0
    in_artifact: int | None = None
    form: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not (k in ("in_artifact", "form") and v is None)}

    @classmethod
    def from_dict(cls, f: Fields) -> XcaRecord:
        skipped = f.mapping("skipped", optional=True) or {}
        return cls(f.boolean("enabled"), f.integer("expected"), f.integer("fused"), f.text("expected_from"),
                   f.integer("found", optional=True) or 0, {str(k): str(v) for k, v in skipped.items()},
                   f.number("max_rel_err", optional=True) or 0.0, f.integer("in_artifact", optional=True),
                   f.string("form", optional=True))


@dataclass(frozen=True)
class CheckRecord:
    """The quick check after conversion: `metrics` are `metrics.agreement`'s figures on `images` images,
    `failures` the target tolerances they break (empty: within tolerance)."""

    images: int
    failures: tuple[str, ...]
    metrics: Mapping[str, float]

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def get(self, key: str, default: float | None = None) -> float | None:
        return self.metrics.get(key, default)

    def to_dict(self) -> dict:
        return {"images": self.images, **self.metrics, "failures": list(self.failures)}

    @classmethod
    def from_dict(cls, f: Fields) -> CheckRecord:
        metrics = {}
        for key, value in f.obj.items():
            if key in ("images", "failures"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RecordError(f"{f.where}: manifest field check.{key} is not a number")
            metrics[key] = float(value)
        if "cosine_mean" not in metrics:
            raise RecordError(f"{f.where}: manifest field check.cosine_mean is missing or not a number")
        return cls(f.integer("images"), f.strings("failures"), metrics)

    @classmethod
    def of(cls, measured: Mapping[str, Any], failures: list[str]) -> CheckRecord:
        """From `metrics.agreement`'s result (its `worst` indices are not a metric and stay out)."""
        metrics = {k: float(v) for k, v in measured.items() if k not in ("images", "worst")}
        return cls(int(measured["images"]), tuple(failures), metrics)


@dataclass(frozen=True)
class MaxDropRecord:
    """`convert --max-drop`: the promise, what was measured on `basis`, how layers were chosen, which stayed
    float, and every step's drop."""

    max_drop: float
    measured_drop: float
    basis: str
    held: bool
    method: str
    kept_nodes: tuple[str, ...]
    steps: tuple[Mapping[str, Any], ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "kept_nodes": list(self.kept_nodes), "steps": [dict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, f: Fields) -> MaxDropRecord:
        steps = f.items("steps")
        if not all(isinstance(s, dict) for s in steps):
            raise RecordError(f"{f.where}: manifest field max_drop.steps is not a list of objects")
        return cls(f.number("max_drop"), f.number("measured_drop"), f.string("basis"), f.boolean("held"),
                   f.string("method"), f.strings("kept_nodes"), tuple(steps))


@dataclass(frozen=True)
class CalibrationRecord:
    """The calibration images an integer target was quantized with: where, how many, their digest."""

    source: str
    images: int
    digest: str
    skipped: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, f: Fields) -> CalibrationRecord:
        return cls(f.string("source"), f.integer("images"), f.string("digest"),
                   f.integer("skipped", optional=True) or 0)


@dataclass(frozen=True)
class LabelsRecord:
    """The class names shipped beside the model (`file`, one per line) and how many there are."""

    file: str
    count: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, f: Fields) -> LabelsRecord:
        return cls(f.string("file"), f.integer("count"))
