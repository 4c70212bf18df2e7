"""Shape math (what depends only on the input's shape) is folded, and the graph computes the same at
every batch size, including ones the folding never saw."""

import numpy as np
import tensorflow as tf

from xcit_edge.graph.canonicalize import op_counts
from xcit_edge.graph.run import run_graph
from xcit_edge.graph.shapefold import classify, fold_shape_math


def _frozen(f, shape=(None, 6, 4)):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: tf.identity(f(x), name="out"),
                     input_signature=[tf.TensorSpec(shape, tf.float32, name="x")]).get_concrete_function()
    return convert_variables_to_constants_v2(fn)


def onnx_tf_like(x):
    """The forms onnx-tf writes: a reshape whose shape comes from Shape(x), a slice whose end is the
    input's shape, a positional table built from the batch size and added to x."""
    s = tf.shape(x)
    flat = tf.reshape(x, tf.stack([s[0], s[1] * s[2]]))  # [B, 24]: the batch varies, the rest is fixed
    half = tf.strided_slice(flat, [0, 0], tf.stack([s[0], 12]))  # end [B, 12]: linear in the batch
    table = tf.tile(tf.reshape(tf.range(12, dtype=tf.float32), [1, 12]), tf.stack([s[0], 1]))  # batch tile
    back = tf.reshape(half + table, tf.stack([s[0], -1, 2]))  # a shape with -1 already: linear
    return back * 2.0


def test_every_kind_of_shape_math_is_folded_and_exact():
    fn = _frozen(onnx_tf_like)
    gd = fn.graph.as_graph_def()
    folded, report = fold_shape_math(gd, "x:0", [None, 6, 4], ["out"])
    assert report.folded >= 4 and report.reshape >= 1 and report.linear >= 1 and report.tiled >= 1, report
    assert not report.left
    assert op_counts(folded).get("Shape", 0) == 1  # only the batch lookup the folded tensors share
    for batch in (1, 5):  # 5: never probed
        x = np.random.default_rng(batch).standard_normal((batch, 6, 4)).astype(np.float32)
        want = run_graph(gd, "x:0", x, ["out:0"])[0]
        got = run_graph(folded, "x:0", x, ["out:0"])[0]
        np.testing.assert_array_equal(got, want)


def test_values_are_never_folded():
    """A tensor computed from the input's values (not only its shape) is "value": nothing to fold."""
    def f(x):
        n = tf.cast(tf.reduce_sum(x * 0.0), tf.int32) + 1  # 1, but computed from the values
        return tf.reshape(x, tf.stack([n, -1]))

    gd = _frozen(f).graph.as_graph_def()
    kinds = classify(gd, "x")
    assert kinds["x"] == "value" and {kinds[n.name] for n in gd.node if n.op == "Cast"} == {"value"}
    folded, report = fold_shape_math(gd, "x:0", [None, 6, 4], ["out"])
    assert report.folded == 0 and folded is gd


def test_shape_math_is_evaluated_without_running_the_model():
    """Shapes TensorFlow's shape inference knows are fed, not computed: folding needs no forward pass (it
    took six of a large model at 384 px). The model part here fails whenever it runs (CheckNumerics of
    log(0 - 1) on the zeros the fold evaluates with), so the fold succeeds only if it never runs."""
    def f(x):
        y = tf.debugging.check_numerics(tf.math.log(x - 1.0), "ran the model")  # [B, 6, 4]
        s = tf.shape(y)
        return tf.reshape(x, tf.stack([s[0], s[1] * s[2]]))

    gd = _frozen(f).graph.as_graph_def()
    folded, report = fold_shape_math(gd, "x:0", [None, 6, 4], ["out"])
    assert report.folded >= 1 and not report.left, report
    x = np.full((3, 6, 4), 2.0, np.float32)  # log(1): the model part passes on these
    np.testing.assert_array_equal(run_graph(folded, "x:0", x, ["out:0"])[0], x.reshape(3, 24))
