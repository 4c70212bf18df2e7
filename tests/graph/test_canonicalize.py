"""GELU written any way is found by what it computes and rewritten into the one form TFLite fuses."""

import numpy as np
import pytest
import tensorflow as tf

from xcit_edge.graph.canonicalize import canonicalize_gelu, op_counts

R = 0.7071067811865476
FORMS = {
    "keras (erfc)": lambda x: tf.nn.gelu(x, approximate=False),
    "onnx2tf ((x/√2 -> erf +1)·x)·0.5": lambda x: ((tf.math.erf(x / 1.4142135623730951) + 1.0) * x) * 0.5,
    "x·(0.5·(1+erf(x·r)))": lambda x: x * (0.5 * (1.0 + tf.math.erf(x * R))),
    "canonical": lambda x: (x * 0.5) * (tf.math.erf(x * R) + 1.0),
    # onnx2tf 2.6.9 on the stem/LPI GELUs: a layout transpose pair between the Erf and the +1
    "onnx2tf 2.x (erf -> transpose -> +1 -> transpose back)": lambda x: (
        x * tf.transpose(tf.transpose(tf.math.erf(x / 1.4142135623730951), [0, 2, 1]) + 1.0, [0, 2, 1])) * 0.5,
}


def frozen(f):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: tf.identity(f(x) + 0.0, name="out"),
                     input_signature=[tf.TensorSpec([1, 4, 8], tf.float32)]).get_concrete_function()
    return convert_variables_to_constants_v2(fn)


def run_graph_def(gd, x):
    return _wrap(gd)(tf.constant(x)).numpy()


@pytest.mark.parametrize("form", list(FORMS))
def test_every_gelu_form_is_rewritten_exactly(form):
    fn = frozen(FORMS[form])
    gd, n = canonicalize_gelu(fn.graph.as_graph_def(), ["out"])
    assert n == 1
    ops = op_counts(gd)
    assert "Erfc" not in ops and ops["Erf"] == 1
    x = np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32) * 3
    np.testing.assert_allclose(run_graph_def(gd, x), FORMS[form](tf.constant(x)).numpy(), rtol=1e-6, atol=1e-6)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([_wrap(gd)], None)
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=conv.convert(),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    assert "GELU" in {o["op_name"] for o in it._get_ops_details()}


def _wrap(gd):
    def imp():
        tf.compat.v1.import_graph_def(gd, name="")

    w = tf.compat.v1.wrap_function(imp, [])
    inp = next(n.name for n in gd.node if n.op == "Placeholder")
    return w.prune(w.graph.get_tensor_by_name(inp + ":0"), w.graph.get_tensor_by_name("out:0"))


def test_an_erf_that_is_no_gelu_is_left_alone():
    fn = frozen(lambda x: tf.math.erf(x) * 2.0)
    gd, n = canonicalize_gelu(fn.graph.as_graph_def(), ["out"])
    assert n == 0 and op_counts(gd)["Erf"] == 1


def test_a_transpose_that_is_not_undone_is_no_gelu():
    """Transposed once (a square tensor keeps its shape), erf+1 is in another layout than x: no GELU."""
    def f(x):
        sq = tf.reshape(x, [1, 4, 4, 2])
        return tf.reshape((sq * 0.5) * tf.transpose(tf.math.erf(sq * R) + 1.0, [0, 2, 1, 3]), [1, 4, 8])

    assert canonicalize_gelu(frozen(f).graph.as_graph_def(), ["out"])[1] == 0
