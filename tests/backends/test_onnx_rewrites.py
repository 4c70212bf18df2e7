"""ONNX rewrites (`backends/onnx/rewrites/`): LayerNorm as tf2onnx writes it becomes one
LayerNormalization only when it computes a LayerNorm; a look-alike stays as it is."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from xcit_edge.backends.onnx.rewrites import fold_scales, fold_tensordot, fuse_layernorm, l2_norm_form, optimize

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


def test_optimize_skip_leaves_out_the_named_rewrite_and_refuses_unknown_names():
    """`optimize_skip` in a target's TOML switches a rewrite off (issue 21: measured both ways per CPU)."""
    from xcit_edge.errors import XcitEdgeError

    model, report = optimize(_layernorm_model(), skip=("layernorm",))
    assert report["layernorm"] == 0
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
    with pytest.raises(XcitEdgeError, match=r"unknown ONNX rewrite.*layer_norm"):
        optimize(_layernorm_model(), skip=("layer_norm",))


def _model(nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _layerscale_model(gamma_shape) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Mul", ["a", "g"], ["ag"]), helper.make_node("Add", ["x", "ag"], ["y"])]  # residual
    inits = {"w": rng.standard_normal((D, D)), "b": rng.standard_normal(D),
             "g": rng.uniform(0.1, 2, gamma_shape)}
    return _model(nodes, inits, ["B", D, D], ["B", D, D])


def test_layerscale_folds_into_the_matmul_and_a_token_scale_does_not():
    x = np.random.default_rng(6).standard_normal((2, D, D)).astype(np.float32)
    folded, n = fold_scales(_layerscale_model((D,)))
    assert n == 1 and [node.op_type for node in folded.graph.node] == ["MatMul", "Add", "Add"]
    np.testing.assert_allclose(_run(folded, x), _run(_layerscale_model((D,)), x), rtol=1e-5, atol=1e-5)
    # tokens = channels: a (D, 1) constant scales tokens, not channels; folding it would be wrong
    same, n = fold_scales(_layerscale_model((D, 1)))
    assert n == 0 and len(same.graph.node) == 4
    # a Mul that is the graph's output keeps its name there: left alone
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Mul", ["a", "g"], ["y"])]
    inits = {"w": np.eye(D), "b": np.ones(D), "g": np.full(D, 2.0)}
    last, n = fold_scales(_model(nodes, inits, ["B", D, D], ["B", D, D]))
    assert n == 0 and len(last.graph.node) == 3


def _lpi_model() -> onnx.ModelProto:
    """TensorFlow's LPI after its optimizer: GELU (x·0.5)·((erf(x/√2)+1)·s) + b -> depthwise 3x3 conv, padded."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["xs"]), helper.make_node("Erf", ["xs"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["e1", "s"], ["es"]),
             helper.make_node("Mul", ["x", "half"], ["xh"]), helper.make_node("Mul", ["xh", "es"], ["g"]),
             helper.make_node("Add", ["g", "b"], ["gb"]),
             helper.make_node("Conv", ["gb", "w", "wb"], ["y"], group=D, pads=[1, 1, 1, 1])]
    inits = {"sqrt2": np.sqrt(2.0), "one": np.ones((1, 1, 1, 1)), "half": 0.5,
             "s": rng.uniform(0.2, 2, (1, D, 1, 1)), "b": rng.standard_normal((1, D, 1, 1)),
             "w": rng.standard_normal((D, 1, 3, 3)), "wb": rng.standard_normal(D)}
    return _model(nodes, inits, ["B", D, 6, 6], ["B", D, 6, 6])


def _ort_optimized_ops(model) -> list[str]:
    import tempfile

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = f"{tempfile.mkdtemp()}/opt.onnx"
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def test_batchnorm_scale_leaves_the_gelu_for_the_conv_exactly_at_the_border():
    x = np.random.default_rng(8).standard_normal((2, D, 6, 6)).astype(np.float32)
    want = _run(_lpi_model(), x)
    assert "Erf" in _ort_optimized_ops(_lpi_model())  # as TensorFlow leaves it, no GELU fusion matches
    model, report = optimize(_lpi_model())
    assert report["scales_folded"] == 1 and report["gelu_div"] == 0
    np.testing.assert_allclose(_run(model, x), want, rtol=1e-5, atol=1e-5)  # the padded border included
    ops = _ort_optimized_ops(model)
    assert "Gelu" in ops and "Erf" not in ops


def test_onnx_runtime_fuses_every_gelu_of_the_fixture_artifact(fixture_artifacts):
    from pathlib import Path

    from onnx import inliner

    model = inliner.inline_local_functions(onnx.load(str(Path(fixture_artifacts["onnx"]["path"]) / "model.onnx")))
    erfs = sum(n.op_type == "Erf" for n in model.graph.node)
    ops = _ort_optimized_ops(model)
    assert erfs > 0 and "Erf" not in ops and ops.count("Gelu") + ops.count("BiasGelu") == erfs


@pytest.mark.parametrize("opset", [17, 18])
def test_l2_norm_becomes_reducel2_and_a_dot_product_does_not(opset):
    def norm(second: str) -> onnx.ModelProto:
        nodes = [helper.make_node("Mul", ["x", second], ["sq"]),
                 helper.make_node("ReduceSum", ["sq", "axes"], ["s"], keepdims=1),
                 helper.make_node("Sqrt", ["s"], ["y"])]
        graph = helper.make_graph(nodes, "n", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, D])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1, D])],
                                  [numpy_helper.from_array(np.array([1], np.int64), "axes"),
                                   numpy_helper.from_array(np.full((5, D), 2, np.float32), "two")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    x = np.random.default_rng(9).standard_normal((2, 5, D)).astype(np.float32)
    model, n = l2_norm_form(norm("x"))
    assert n == 1 and [node.op_type for node in model.graph.node] == ["ReduceL2"]
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(_run(model, x), np.sqrt((x * x).sum(1, keepdims=True)), rtol=1e-6)
    same, n = l2_norm_form(norm("two"))  # sqrt(sum(2x)) is no norm
    assert n == 0 and len(same.graph.node) == 3


def test_onnx_runtime_layernormalization_is_as_close_to_float64_as_the_decomposed_form():
    """Where tokens have a large mean, the fused kernel and tf2onnx's decomposed float32 LayerNorm round
    differently (what `optimize`'s whole-model guard sees on 24-block models), and the fused one is the
    closer to float64."""
    rng = np.random.default_rng(11)
    x = (100 + rng.standard_normal((3, 5, D * 64))).astype(np.float32)
    ones, zeros = np.ones(D * 64, np.float32), np.zeros(D * 64, np.float32)
    graph = helper.make_graph([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-6)],
                              "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, D * 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(ones, "g"), numpy_helper.from_array(zeros, "b")])
    fused = _run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    d = x - x.mean(-1, keepdims=True)
    decomposed = d / np.sqrt((d * d).mean(-1, keepdims=True) + np.float32(1e-6))
    assert np.abs(fused - want).max() <= np.abs(decomposed - want).max()


def test_optimize_refuses_a_rewrite_that_changes_the_output(monkeypatch):
    """The guard: a pass that gets one weight 1 % wrong is undone (the model comes back as it was)."""
    import xcit_edge.backends.onnx.rewrites as rewrites
    from xcit_edge.backends.onnx.index import OnnxIndex
    from xcit_edge.backends.onnx.rewrites.common import drop_unused, set_init

    def wrong(model):
        ix = OnnxIndex(model)
        mm = next(n for n in model.graph.node if n.op_type == "MatMul")
        mm.input[1] = set_init(model, ix, mm.input[1], ix.inits[mm.input[1]] * 1.01)
        drop_unused(model)
        return model, 1

    monkeypatch.setattr(rewrites, "PASSES", (("wrong", wrong),))
    x = np.random.default_rng(12).standard_normal((2, D, D)).astype(np.float32)
    model, report = optimize(_layerscale_model((D,)))
    assert report["wrong"] == 0 and report["rejected_rel_err"] > 1e-3
    np.testing.assert_array_equal(_run(model, x), _run(_layerscale_model((D,)), x))


def test_large_weights_reach_the_probe_session_as_shared_arrays_and_fold_exactly():
    """Weights of 64 KiB and more are handed to ONNX Runtime's probe sessions as arrays (not serialized
    with the model), shared by every pass; a folded weight is a new array, the replaced one forgotten."""
    from xcit_edge.backends.onnx import index
    from xcit_edge.backends.onnx.rewrites.common import _light_copy

    width = 160  # 160 x 160 float32 = 100 KiB: shared
    rng = np.random.default_rng(13)
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["x2"]), helper.make_node("MatMul", ["x2", "w"], ["m2"]),
             helper.make_node("Reshape", ["m2", "back"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["a"]), helper.make_node("Mul", ["a", "g"], ["ag"]),
             helper.make_node("Add", ["x", "ag"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("flat", [-1, width]),
                                                                            ("back", [-1, 7, width]))]
    inits += [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w", rng.standard_normal((width, width)) / 10), ("b", rng.standard_normal(width)),
        ("g", rng.uniform(0.1, 2, width)))]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 7, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 7, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 7, width)).astype(np.float32)
    want = _run(model, x)
    with index.shared_arrays() as held:
        light, weights, _ = _light_copy(model, ["m2"])
        assert list(weights) == ["w"] and len(light.SerializeToString()) < 10_000
        optimized, report = optimize(model)
        assert list(held) == ["w"]  # this block's own: optimize shares in a block of its own
    assert report["tensordot_folded"] == 1 and report["scales_folded"] == 1
    np.testing.assert_allclose(_run(optimized, x), want, rtol=1e-5, atol=1e-5)
    assert [t.name for t in optimized.graph.initializer if t.name == "w"] == []  # replaced by w·g


def test_probe_groups_runs_as_many_sites_as_fit_and_returns_what_one_probe_does():
    from xcit_edge.backends.onnx.rewrites.common import probe, probe_groups

    model = _layernorm_model()
    groups = [["mean", "d"], ["sq", "var"], ["std", "y"]]
    whole = probe(model, [t for g in groups for t in g])
    for budget in (1, 1 << 30):  # one group per run; all in one run after the first
        got = dict(probe_groups(model, groups, budget=budget))
        assert sorted(got) == [0, 1, 2]
        for k, g in enumerate(groups):
            assert list(got[k]) == g
            for t in g:
                np.testing.assert_array_equal(got[k][t], whole[t])


def test_probe_views_are_the_rows_and_the_shape_of_the_value(monkeypatch):
    """The rewrites' checks need the first rows (LayerNorm: per row of the last axis) or the shape (a folded
    Reshape); a large model at 384 px probes every site in one run that way."""
    from xcit_edge.backends.onnx.rewrites import common
    from xcit_edge.backends.onnx.rewrites.common import probe

    monkeypatch.setattr(common, "PROBE_ROWS", 3)  # fewer than the 2 x 5 rows of the model's tokens
    model = _layernorm_model()
    tensors = ["x", "mean", "y"]
    whole = probe(model, tensors)
    rows, shapes = probe(model, tensors, view="rows"), probe(model, tensors, view="shape")
    for t in tensors:
        v = whole[t]
        assert tuple(shapes[t]) == (2, *v.shape[1:])  # shapes at batch 2: the batch axis tells itself apart
        np.testing.assert_array_equal(rows[t], v.reshape(-1, v.shape[-1])[:3])
    with pytest.raises(ValueError, match="probe view"):
        probe(model, tensors, view="all")
    groups = [["x", "mean"], ["d", "sq"], ["var", "y"]]
    monkeypatch.setattr(common, "LIVE_BUDGET_BYTES", 1)  # one group per run: each run holds only its own
    assert common._live_chunks(model, groups) == [1, 2, 3]
    for k, values in common.probe_groups(model, groups, view="rows"):
        for t in groups[k]:
            np.testing.assert_array_equal(values[t], probe(model, [t], view="rows")[t])
