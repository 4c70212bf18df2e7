"""ONNX rewrites (`backends/onnx_optimize.py`): LayerNorm as tf2onnx writes it becomes one
LayerNormalization only when it computes a LayerNorm; a look-alike stays as it is."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from xcit_edge.backends.onnx_optimize import fold_tensordot, fuse_layernorm, optimize

D = 8


def _layernorm_model(root: str = "Sqrt") -> onnx.ModelProto:
    """tf2onnx's Keras LayerNorm: GAP mean, Neg, Sub, Mul, GAP variance, Add eps, root, Reciprocal,
    three Muls and two Adds; `root="Identity"` makes a look-alike that divides by the variance."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (np.array(1e-6, np.float32), "eps"), (rng.uniform(0.5, 2, D).astype(np.float32), "gamma"),
        (rng.standard_normal(D).astype(np.float32), "beta"))]
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["mean"]),
        helper.make_node("Neg", ["mean"], ["neg"]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("GlobalAveragePool", ["sq"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node(root, ["ve"], ["std"]),
        helper.make_node("Reciprocal", ["std"], ["inv"]),
        helper.make_node("Mul", ["inv", "gamma"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["xg"]),
        helper.make_node("Mul", ["neg", "g"], ["mg"]),
        helper.make_node("Add", ["mg", "beta"], ["b"]),
        helper.make_node("Add", ["xg", "b"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 5, D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_tf2onnx_layernorm_becomes_layernormalization():
    x = np.random.default_rng(1).standard_normal((3, 5, D)).astype(np.float32)
    want = _run(_layernorm_model(), x)
    model, n = fuse_layernorm(_layernorm_model())
    assert n == 1 and [node.op_type for node in model.graph.node] == ["LayerNormalization"]
    onnx.checker.check_model(model, full_check=True)
    assert np.abs(_run(model, x) - want).max() <= 1e-5 * np.abs(want).max()


def test_layernorm_look_alike_is_left_alone():
    model, n = fuse_layernorm(_layernorm_model(root="Identity"))
    assert n == 0 and len(model.graph.node) == 13


def test_tensordot_reshapes_fold_into_a_broadcasting_matmul():
    w = np.random.default_rng(2).standard_normal((D, 4)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["x2"]), helper.make_node("MatMul", ["x2", "w"], ["y2"]),
             helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "two"], ["lead"]),
             helper.make_node("Concat", ["lead", "four"], ["shape"], axis=0),
             helper.make_node("Reshape", ["y2", "shape"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("flat", [-1, D]), ("zero", [0]), ("two", [2]), ("four", [4]))] + [numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "td", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 5, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(3).standard_normal((2, 5, D)).astype(np.float32)
    folded, n = fold_tensordot(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert n == 1 and [node.op_type for node in folded.graph.node] == ["MatMul"]
    np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("root", ["Sqrt", "Identity"])
def test_optimize_never_changes_what_the_model_computes(root):
    x = np.random.default_rng(4).standard_normal((2, 5, D)).astype(np.float32)
    model, report = optimize(_layernorm_model(root))
    assert np.abs(_run(model, x) - _run(_layernorm_model(root), x)).max() <= 1e-5
    assert report["layernorm"] == (1 if root == "Sqrt" else 0)
