"""The typed manifest: written and read back whole, and every field checked on read (untrusted input)."""

import copy
import re

import pytest

from xcit_edge.artifact.manifest import Manifest
from xcit_edge.data.preprocessing import timm_default
from xcit_edge.records import (
    CheckRecord,
    FileEntry,
    IOContract,
    MaxDropRecord,
    RecordError,
    SourceInfo,
    TensorInfo,
    XcaRecord,
)


def _manifest() -> Manifest:
    return Manifest(
        target={"name": "onnx", "backend": "onnx"},
        source=SourceInfo("m", "dir", "/m", "ab" * 32, "xcit_nano_12_p16_224"),
        io=IOContract(TensorInfo("input", "float32", (-1, 224, 224, 3), "NHWC", "signature"),
                      TensorInfo("output", "float32", (-1, 1000), kind="logits")),
        preprocessing=timm_default(224), preprocessing_origin="recorded", baked=False,
        files=(FileEntry("model.onnx", "cd" * 32, 12),), check=CheckRecord(16, (), {"cosine_mean": 1.0}),
        xca=XcaRecord(enabled=True, expected=12, fused=12, in_artifact=12, form="function"),
        max_drop=MaxDropRecord(1.0, 0.5, "top-1 on 200 images", True, "none needed", ("a",), ({"drop": 0.5},)),
        kept_float=("SOFTMAX x12",), tool="xcit-edge 0", created="2026-12-03T00:00:00+00:00")


def test_a_manifest_reads_back_as_written():
    import json

    m = _manifest()
    doc = json.loads(json.dumps(m.to_dict()))
    assert Manifest.from_dict(doc, "m.json") == m


@pytest.mark.parametrize(("path", "value", "field"), [
    (("io", "input", "shape"), ["224"], "io.input.shape"),
    (("check", "cosine_mean"), True, "check.cosine_mean"),
    (("artifact", "files", 0, "bytes"), "12", "artifact.files[].bytes"),
    (("max_drop", "steps"), ["x"], "max_drop.steps"),
    (("xca", "fused"), None, "xca.fused"),
    (("target", "name"), 3, "target.name"),
    (("io", "input", "layout"), "HWCN", "io.input.layout"),
])
def test_a_bad_field_is_one_error_naming_it(path, value, field):
    doc = copy.deepcopy(_manifest().to_dict())
    where = doc
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    with pytest.raises(RecordError, match=re.escape(f"m.json: manifest field {field}")):
        Manifest.from_dict(doc, "m.json")
