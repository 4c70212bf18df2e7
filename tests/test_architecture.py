"""The code's shape, checked: backends reached only through the registry, typed errors, no outside citations.

These read the package's source (ast, not regexes over text), so a new module is checked the day it lands.
"""

import ast
from pathlib import Path

import numpy as np
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


# --- docs/ARCHITECTURE.md's worked examples, run as written ------------------------------------------------

DOC = REPO / "docs" / "ARCHITECTURE.md"


def _blocks(lang: str) -> list[str]:
    import re

    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_worked_example_target_is_a_valid_spec(tmp_path):
    from xcit_edge.targets import _parse

    (text,) = _blocks("toml")
    path = tmp_path / "onnx-plain.toml"
    path.write_text(text, encoding="utf-8")
    spec = _parse(path)
    assert (spec.backend, spec.mode, spec.options["optimize"]) == ("onnx", "none", False)
    assert not spec.quantized


def test_worked_example_backend_converts_the_fixture(fixture_dir, timm_fixture, held_out, tmp_path):
    """The example backend of the docs, registered, converts the trained fixture, and its artifact computes
    what timm computes (and what its runtime-defaults run accepts)."""
    import types

    from conftest import timm_forward

    from xcit_edge import backends
    from xcit_edge.data.calibration import normalize
    from xcit_edge.data.preprocessing import timm_default
    from xcit_edge.graph import prepare
    from xcit_edge.model.zoo import FIXTURE
    from xcit_edge.targets import TargetSpec

    backend_code = next(b for b in _blocks("python") if "register(" in b)
    mod = types.ModuleType("tfgraph_example")
    import sys

    sys.modules[mod.__name__] = mod
    try:
        exec(compile(backend_code, str(DOC), "exec"), mod.__dict__)
        assert backends.backend("tfgraph") is mod
        spec = TargetSpec("tfgraph", "tfgraph", "fp32", "", "model.pb")
        graph = prepare(fixture_dir)
        conv = mod.convert(graph, spec, None, tmp_path)
        assert conv.details["xca_blocks"] == FIXTURE.depth and (tmp_path / "io.json").is_file()
        pixels, _ = held_out
        x = normalize(pixels[:8], timm_default(FIXTURE.img_size))
        out = mod.run(mod.load(tmp_path / spec.file, spec), graph.model_input(x))
        ref = timm_forward(timm_fixture, x)
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4
        assert mod.run_defaults(tmp_path / spec.file) == {}
    finally:
        backends._REGISTRY.pop("tfgraph", None)
        sys.modules.pop(mod.__name__, None)


def test_worked_example_rewrite_drops_identities():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rewrite_code = next(b for b in _blocks("python") if "def drop_identities" in b)
    scope: dict = {}
    exec(compile(rewrite_code, str(DOC), "exec"), scope)
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    want = run(model)
    out, count = scope["drop_identities"](model)
    onnx.checker.check_model(out)
    assert count == 2 and [n.op_type for n in out.graph.node] == ["Relu"]
    assert np.array_equal(run(out), want)


def test_readme_module_map_names_every_module():
    """The README's map is how a newcomer finds a concern: a module it does not name is one nobody finds."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| module | concern |"):]
    table = table[:table.index("\n\n")]
    named = {cell.split("`")[1] for cell in table.splitlines()[2:]}
    dirs = {n for n in named if n.endswith("/")} | {"backends/tflite/", "backends/onnx/", "backends/openvino/"}
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name in ("__init__.py", "__main__.py") or rel in named:
            continue
        assert any(rel.startswith(d) for d in dirs), f"{rel} is not in the README's module map"
