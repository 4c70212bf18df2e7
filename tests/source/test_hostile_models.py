"""SavedModels are untrusted: a graph that reaches files, the network or the process is refused, with the op
names, before anything of it runs (`safety.check_ops`); `--trust-model` lets it through, loudly."""

import logging
from pathlib import Path

import pytest
from conftest import one_line_error, run

from xcit_edge.source.inspect import read_saved_model_proto
from xcit_edge.source.safety import reaching_outside


def _save(path: Path, body) -> Path:
    """A SavedModel with an image-model signature whose serving function runs `body(x)` too."""
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 64, 64, 3], tf.float32, name="input")])
        def serve(self, x):
            with tf.control_dependencies(body(x)):
                return {"output": tf.reduce_mean(x, axis=[1, 2])}

    m = M()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


@pytest.fixture
def reads_passwd(tmp_path):
    """Reads the system password file and leaves a marker file when it runs."""
    import tensorflow as tf

    marker = tmp_path / "it-ran"

    def body(x):
        return [tf.io.write_file(str(marker), tf.io.read_file("/etc/passwd"))]

    return _save(tmp_path / "hostile", body), marker


def test_a_model_reading_the_password_file_is_refused_not_run(reads_passwd, tmp_path):
    model, marker = reads_passwd
    for args in (["convert", model, "--target", "onnx", "--out", tmp_path / "out"],
                 ["reference", model, "--calibration", "sample", "--out", tmp_path / "ref.npz"],
                 ["inspect", model]):
        res = run(*args)
        if args[0] == "inspect":  # inspect never runs a graph: it may describe this one
            continue
        line = one_line_error(res)
        assert "ReadFile" in line and "WriteFile" in line and "--trust-model" in line
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "ref.npz").exists()


def test_trust_model_lets_it_through_with_a_warning(reads_passwd, tmp_path, caplog):
    model, _ = reads_passwd
    with caplog.at_level(logging.WARNING, logger="xcit_edge.source.safety"):
        res = run("convert", model, "--target", "onnx", "--out", tmp_path / "out", "--trust-model")
    assert any("--trust-model" in r.message and "ReadFile" in r.message for r in caplog.records)
    assert "reaches outside" not in res.output  # past the op check (it is no XCiT: refused for that instead)
    assert res.exit_code == 2 and "XCiT" in res.output


def test_checkpoint_ops_only_outside_the_serving_path(fixture_dir, tmp_path):
    import tensorflow as tf

    meta = read_saved_model_proto(fixture_dir).meta_graphs[0]
    ops = {n.op for f in meta.graph_def.library.function for n in f.node_def} | {n.op for n in meta.graph_def.node}
    assert "RestoreV2" in ops and reaching_outside(meta) == []  # the loader's own restore: allowed

    def restore(x):
        return [tf.raw_ops.RestoreV2(prefix="/etc/some-checkpoint", tensor_names=["w"], shape_and_slices=[""],
                                     dtypes=[tf.float32])[0]]

    meta = read_saved_model_proto(_save(tmp_path / "restore", restore)).meta_graphs[0]
    assert reaching_outside(meta) == ["RestoreV2 (touches files from the serving function)"]


def test_print_to_a_file_and_custom_ops_are_refused(tmp_path):
    import tensorflow as tf

    def prints(x):
        return [tf.print(tf.shape(x), output_stream=f"file://{tmp_path / 'log'}")]

    meta = read_saved_model_proto(_save(tmp_path / "prints", prints)).meta_graphs[0]
    assert reaching_outside(meta) == ["PrintV2 (prints to a file)"]
    fn = next(f for f in meta.graph_def.library.function if any(n.op == "Mean" for n in f.node_def))
    next(n for n in fn.node_def if n.op == "Mean").op = "MyCustomKernel"  # as a custom op library would name it
    assert reaching_outside(meta) == ["MyCustomKernel (not a TensorFlow op (a custom op library))",
                                      "PrintV2 (prints to a file)"]


@pytest.mark.parametrize("part", ["saved_model.pb", "variables/variables.data-00000-of-00001"])
def test_a_truncated_saved_model_is_one_line_and_writes_nothing(part, fixture_dir, tmp_path):
    """A download cut short: the graph or the weights end mid-record."""
    import shutil

    model = tmp_path / "cut"
    shutil.copytree(fixture_dir, model)
    data = (model / part).read_bytes()
    (model / part).write_bytes(data[: len(data) // 2])
    line = one_line_error(run("convert", model, "--target", "onnx", "--out", tmp_path / "out"))
    assert "cut" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
