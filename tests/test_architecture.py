"""The code's shape, checked: backends reached only through the registry, typed errors, no outside citations.

These read the package's source (ast, not regexes over text), so a new module is checked the day it lands.
"""

import ast
from pathlib import Path

import pytest

import xcit_edge
from xcit_edge.backends import all_backends, backend, register
from xcit_edge.backends.base import REQUIRED
from xcit_edge.errors import SpecError
from xcit_edge.targets import all_targets

PACKAGE = Path(xcit_edge.__file__).parent
REPO = PACKAGE.parent


def _modules(outside: str | None = None) -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if outside is None or outside not in p.relative_to(PACKAGE).parts]


def test_every_backend_implements_the_protocol_and_every_target_names_one():
    found = all_backends()
    assert set(found) == {"tflite", "onnx", "openvino"}
    for name, mod in found.items():
        assert mod.NAME == name and all(hasattr(mod, attr) for attr in REQUIRED), name
        assert len({m.name for m in mod.MODES}) == len(mod.MODES) and mod.MODES[0].name == "none", name
    for spec in all_targets().values():
        assert spec.mode in [m.name for m in backend(spec.backend).MODES], spec.name


def test_no_backend_name_outside_backends():
    """Adding a runtime is one package under backends/ plus TOML files: no other module may branch on a
    backend's name (a string literal equal to one), or list its packages."""
    names = set(all_backends())
    hits = []
    for path in _modules(outside="backends"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                hits.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert not hits, hits


def test_errors_are_leaf_types():
    """`raise XcitEdgeError(...)` says nothing about what failed: every raise names a leaf class."""
    hits = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                    and isinstance(node.exc.func, ast.Name) and node.exc.func.id == "XcitEdgeError"):
                hits.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not hits, hits


def test_the_first_line_idiom_is_one_helper():
    hits = [f"{p.relative_to(REPO)}" for p in _modules() if p.name != "errors.py"
            and "str(e).strip().splitlines()[0]" in p.read_text(encoding="utf-8")]
    assert not hits, hits


def test_code_cites_only_files_in_the_repository():
    for path in [*_modules(), *(REPO / "targets").glob("*.toml"), REPO / "README.md"]:
        assert "shared/XCIT.md" not in path.read_text(encoding="utf-8"), path


def test_a_backend_missing_part_of_the_protocol_is_refused():
    import types

    half = types.ModuleType("half_backend")
    half.NAME = "half"
    with pytest.raises(SpecError, match="lacks RUNTIME_MODULE"):
        register(half)
    with pytest.raises(SpecError, match="unknown backend 'onnxx' \\(did you mean 'onnx'\\?\\)"):
        backend("onnxx")
