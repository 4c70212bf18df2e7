"""Target specs are data: every shipped TOML parses, names are checked, and a wheel carries them."""

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO_ROOT

from xcit_edge.errors import UsageError, XcitEdgeError
from xcit_edge.targets import _parse, all_targets, parse_targets


def test_shipped_specs():
    specs = all_targets()
    assert {"tflite-int8", "tflite-fp16", "onnx", "openvino"} <= set(specs)
    for spec in specs.values():
        assert set(spec.tolerances) == {"min_cosine", "min_top1_agreement", "max_top1_drop", "min_nn_agreement"}
    assert specs["tflite-int8"].quantized and not specs["onnx"].quantized


def test_parse_targets():
    assert [s.name for s in parse_targets("onnx, tflite-fp16,onnx")] == ["onnx", "tflite-fp16"]
    assert len(parse_targets("all")) == len(all_targets())
    with pytest.raises(UsageError, match="unknown target 'coreml'"):
        parse_targets("coreml")


def test_bad_spec_names_its_file(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text('name = "x"\nbackend = "tensorrt"\nprecision = "fp16"\nfile = "m"\n')
    with pytest.raises(XcitEdgeError, match=r"x.toml: unknown backend 'tensorrt'"):
        _parse(bad)
    bad.write_text('name = "x"\nbackend = "onnx"\nprecision = "fp16"\nfile = "m"\n[quantization]\nmode = "nncf"\n')
    with pytest.raises(XcitEdgeError, match="quantization mode 'nncf'"):
        _parse(bad)


def test_wheel_carries_targets_and_calibration_data(tmp_path):
    """A plain `pip install .` must find the specs: they live in the wheel as xcit_edge._targets."""
    root = REPO_ROOT
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(root),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (whl,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(whl).namelist()
    for spec in all_targets():
        assert f"xcit_edge/_targets/{spec}.toml" in names
    assert "xcit_edge/_calibration/imagenet-1k-labels.tsv" in names
    assert sum(n.startswith("xcit_edge/_calibration/sample/") for n in names) == 80
    package = root / "xcit_edge"
    for module in package.rglob("*.py"):  # every module (a new subpackage must be declared in pyproject.toml)
        assert f"xcit_edge/{module.relative_to(package).as_posix()}" in names, module
