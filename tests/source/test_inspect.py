"""`xcit-edge inspect` reads signatures, layout, variant, parameters and preprocessing
from the protobuf, for our SavedModels and for foreign ones."""

import json

import pytest
import tensorflow as tf
from click.testing import CliRunner

from xcit_edge.cli import main
from xcit_edge.errors import UsageError
from xcit_edge.model.xcit import build_model
from xcit_edge.model.zoo import get_config, param_count
from xcit_edge.source.inspect import inspect_model


def run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def foreign_nchw(tmp_path_factory):
    """A hand-written tf.Module (not our metadata), NCHW input, other output key; the real converters'
    outputs are inspected in tests/source/test_foreign.py."""
    model = build_model(get_config("xcit_nano_12_p16_224"), seed=1)
    m = tf.Module()
    m.model = model

    @tf.function(input_signature=[tf.TensorSpec([1, 3, 224, 224], tf.float32, name="x")])
    def serve(x):
        return {"logits": model(tf.transpose(x, (0, 2, 3, 1)))}

    d = tmp_path_factory.mktemp("f") / "foreign"
    tf.saved_model.save(m, str(d), signatures={"serving_default": serve})
    return d


def test_inspect_our_build(tmp_path):
    out = tmp_path / "nano"
    assert run("build", "xcit_tiny_12_p16_224", "--features", "--out", str(out)).exit_code == 0
    res = run("inspect", str(out), "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["variant"] == "xcit_tiny_12_p16_224_fe" and info["layout"] == "NHWC"
    assert info["params"] == param_count(get_config("xcit_tiny_12_p16_224", features=True))  # = timm's, see test_zoo
    sig = info["signatures"][0]
    assert sig["inputs"][0]["shape"] == [-1, 224, 224, 3] and sig["outputs"][0]["shape"] == [-1, 192]
    assert info["preprocessing_origin"] == "recorded in the SavedModel"
    text = run("inspect", str(out)).output
    assert "XCiT variant:  xcit_tiny_12_p16_224_fe" in text and "bicubic" in text


def test_inspect_foreign_nchw_identifies_variant(foreign_nchw):
    info = inspect_model(foreign_nchw)
    assert info.layout == "NCHW"
    assert info.variant == "xcit_nano_12_p16_224" and "identified from the graph" in info.variant_origin
    assert {k: info.structure[k] for k in ("patch_size", "depth", "width", "heads", "tokens")} == {
        "patch_size": 16, "depth": 12, "width": 128, "heads": 4, "tokens": 196}
    assert info.params == 3_053_224
    assert [o.key for o in info.signatures[0].outputs] == ["logits"]
    assert list(info.preprocessing["size"]) == [224, 224] and "assumed" in info.preprocessing_origin


def test_layout_is_read_from_the_signature_whatever_the_library_order(foreign_nchw):
    """The serving function transposes NCHW to NHWC and calls the model's function, which takes NHWC:
    the layout is what the signature's input reaches, not what the first function found takes (that
    answer changed with the order TensorFlow named the functions in: seen under pytest-xdist)."""
    from xcit_edge.graph.structure import function_input_layout
    from xcit_edge.source.inspect import read_saved_model_proto

    mg = read_saved_model_proto(foreign_nchw).meta_graphs[0]
    functions = list(mg.graph_def.library.function)
    for order in (functions, functions[::-1]):
        del mg.graph_def.library.function[:]
        mg.graph_def.library.function.extend(order)
        assert function_input_layout(mg, "serving_default") == "NCHW"


def test_corrupt_saved_model_is_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(UsageError, match="corrupt SavedModel"):
        inspect_model(bad)
    res = run("inspect", str(bad))
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
