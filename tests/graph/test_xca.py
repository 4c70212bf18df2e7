"""XCA detection and fusion (`graph/xca.py`) on the ways exporters write cross-covariance attention.

Each source below is one XCA block as some exporter writes it (native Keras, onnx-tf with NCHW
transposes and ReduceL2/Clip/Div, Rsqrt/Square/Max forms, 2-D merged-batch tensors); the fused
graph must compute the source's output (1e-5 relative max error), and attention that is not
XCA must be left alone.
"""

import numpy as np
import pytest
from conftest import FIXTURE_WEIGHTS, one_line_error, run

from xcit_edge.errors import ConversionError
from xcit_edge.graph.xca import fuse_xca, reference_xca
from xcit_edge.graph.xca_names import count_blocks
from xcit_edge.records import XcaRecord

tf = pytest.importorskip("tensorflow")

B_, N, H, DH = 2, 36, 4, 8  # batch, tokens, heads, head dim
D = H * DH


def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal((D, 3 * D)) / np.sqrt(D)).astype(np.float32),
            rng.uniform(0.5, 2.0, H).astype(np.float32))


def _native(x, w, tau, norm_axis: int = -1):
    """Like our Keras model: (3, B, h, d, N) after one transpose, x / max(sqrt(sum x²), eps)."""
    qkv = tf.transpose(tf.reshape(tf.matmul(x, w), [-1, N, 3, H, DH]), [2, 0, 3, 4, 1])
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q / tf.maximum(tf.sqrt(tf.reduce_sum(q * q, norm_axis, keepdims=True)), 1e-12)
    k = k / tf.maximum(tf.sqrt(tf.reduce_sum(k * k, norm_axis, keepdims=True)), 1e-12)
    attn = tf.nn.softmax(tf.matmul(q, tf.transpose(k, [0, 1, 3, 2])) * tau.reshape(H, 1, 1), -1)
    return tf.reshape(tf.transpose(tf.matmul(attn, v), [0, 3, 1, 2]), [-1, N, D])


def _onnx_tf(x, w, tau):
    """onnx-tf style: NCHW-ish (B, 3D, N) projection, unbind by Split, ReduceL2 -> Clip -> Expand -> Div."""
    qkv = tf.transpose(tf.matmul(x, w), [0, 2, 1])  # (B, 3D, N)
    q, k, v = (tf.reshape(t, [-1, H, DH, N]) for t in tf.split(qkv, 3, axis=1))

    def l2(t):
        norm = tf.clip_by_value(tf.sqrt(tf.reduce_sum(tf.square(t), -1, keepdims=True)), 1e-12, 3.4e38)
        return t / tf.broadcast_to(norm, tf.shape(t))

    attn = tf.matmul(l2(q), l2(k), transpose_b=True) * tau.reshape(1, H, 1, 1)
    out = tf.matmul(tf.nn.softmax(attn), v)  # (B, h, d, N)
    return tf.transpose(tf.reshape(out, [-1, D, N]), [0, 2, 1])


def _rsqrt_tokens_major(x, w, tau):
    """Token-major q (B, h, N, d), x * rsqrt(max(sum x², eps²)), temperature as a division."""
    qkv = tf.reshape(tf.matmul(tf.reshape(x, [-1, D]), w), [-1, N, 3, H, DH])  # merged-batch matmul
    q, k, v = (tf.transpose(qkv[:, :, i], [0, 2, 1, 3]) for i in range(3))

    def l2(t):
        return t * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(t), 2, keepdims=True), 1e-24))

    attn = tf.nn.softmax(tf.matmul(l2(q), l2(k), transpose_a=True) / (1.0 / tau.reshape(H, 1, 1)))
    out = tf.matmul(v, attn, transpose_b=True)  # (B, h, N, d)
    return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [-1, D])  # merged batch: (B*N, D)


def _plain_attention(x, w, tau):
    """Token attention (softmax over N, no L2 normalization): not XCA, must be left alone."""
    qkv = tf.transpose(tf.reshape(tf.matmul(x, w), [-1, N, 3, H, DH]), [2, 0, 3, 1, 4])
    q, k, v = qkv[0], qkv[1], qkv[2]
    return tf.matmul(tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * DH ** -0.5), v)


def _wrong_axis(x, w, tau):
    """Normalized over channels instead of tokens: XCA's structure, not its semantics."""
    return _native(x, w, tau, norm_axis=-2)


def _frozen(body, blocks: int = 1):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    params = [_weights(i) for i in range(blocks)]

    @tf.function(input_signature=[tf.TensorSpec([None, N, D], tf.float32)])
    def fn(x):
        for w, tau in params:
            y = body(x, tf.constant(w), tau)
            x = x + tf.reshape(y, tf.shape(x))
        return tf.identity(x, name="result")

    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    return frozen.graph.as_graph_def(), frozen.inputs[0].name, frozen.outputs[0].name


def _run(gd, inp, out, x):
    with tf.Graph().as_default() as g:
        tf.compat.v1.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as s:
            return s.run(out, {inp: x})


def _x(batch=3):
    return np.random.default_rng(9).standard_normal((batch, N, D)).astype(np.float32)


@pytest.mark.parametrize("body", [_native, _onnx_tf, _rsqrt_tokens_major], ids=["native", "onnx-tf", "rsqrt"])
def test_every_writing_of_xca_is_fused_and_computes_the_same(body):
    gd, inp, out = _frozen(body, blocks=2)
    fused, report = fuse_xca(gd, inp, [None, N, D], out)
    assert (report.found, report.fused) == (2, 2), report.skipped
    assert count_blocks(n.name for n in fused.node) == 2
    x = _x()
    want, got = _run(gd, inp, out, x), _run(fused, inp, out, x)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-5
    assert [n.op for n in fused.node].count("Softmax") == 2


def test_fused_block_is_the_official_xca():
    """Independent of any graph: one block against the official formula in float64."""
    gd, inp, out = _frozen(_native)
    fused, _ = fuse_xca(gd, inp, [None, N, D], out)
    x = _x(2)
    w, tau = _weights(0)
    qkv = (x @ w).reshape(2, N, 3, H, DH).transpose(2, 0, 3, 1, 4)
    want = x + reference_xca(qkv[0], qkv[1], qkv[2], tau)
    got = _run(fused, inp, out, x)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-5


def test_fused_matmuls_need_no_transposed_copies():
    gd, inp, out = _frozen(_native)
    fused, _ = fuse_xca(gd, inp, [None, N, D], out)
    block = [n for n in fused.node if n.name.startswith("xcit_edge/xca_0/")]
    mm = {n.name.split("/")[-1]: n for n in block if n.op == "BatchMatMulV2"}
    assert mm["gram"].attr["adj_x"].b and mm["apply"].attr["adj_y"].b
    assert [n.name.split("/")[-1] for n in block if n.op == "Transpose"] == ["qkv_token_major", "token_major"]


def test_plain_attention_is_not_xca():
    gd, inp, out = _frozen(_plain_attention)
    fused, report = fuse_xca(gd, inp, [None, N, D], out)
    assert (report.found, report.fused) == (0, 0) and fused is gd


def test_xca_structure_with_other_semantics_is_left_alone():
    gd, inp, out = _frozen(_wrong_axis)
    fused, report = fuse_xca(gd, inp, [None, N, D], out)
    assert (report.found, report.fused) == (1, 0) and fused is gd
    assert "does not reproduce" in next(iter(report.skipped.values()))


# --- through prepare / convert -------------------------------------------------------------------


def _saved_model(tmp_path, bodies):
    """An image model (4x4 patches of a 24x24 input -> 36 tokens) with one block per body."""
    class M(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(3)
            self.embed = tf.constant(rng.standard_normal((48, D)).astype(np.float32) / 7)
            self.head = tf.constant(rng.standard_normal((D, 10)).astype(np.float32) / 6)

        @tf.function(input_signature=[tf.TensorSpec([None, 24, 24, 3], tf.float32)])
        def serve(self, img):
            x = tf.reshape(tf.nn.space_to_depth(img, 4), [-1, N, 48]) @ self.embed
            for i, body in enumerate(bodies):
                w, tau = _weights(i)
                x = x + tf.reshape(body(x, tf.constant(w), tau), tf.shape(x))
            return {"output": tf.reduce_mean(x, 1) @ self.head}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": m.serve})
    return tmp_path / "sm"


def test_partial_fusion_is_refused_unless_allowed(tmp_path):
    from xcit_edge.graph import prepare

    sm = _saved_model(tmp_path, [_native, _wrong_axis])
    with pytest.raises(ConversionError, match="fused 1 of 2 XCA blocks"):
        prepare(sm, allow_unknown=True)
    graph = prepare(sm, allow_unknown=True, allow_partial_fusion=True)
    assert (graph.xca.expected, graph.xca.fused) == (2, 1)
    assert prepare(sm, allow_unknown=True, fuse=False).xca == XcaRecord(enabled=False, expected=2)
    res = run("convert", sm, "--allow-unknown-model", "--target", "onnx", "--out", tmp_path / "o")
    assert "--allow-partial-fusion" in one_line_error(res, code=1)
    assert not (tmp_path / "o").exists()


# --- whole models: fused vs as-written, in every runtime -----------------------------------------


def _tflite_fp32():
    import dataclasses

    from xcit_edge.targets import all_targets

    spec = all_targets()["tflite-fp16"]
    return dataclasses.replace(spec, name="tflite-fp32", precision="fp32", quantization={"mode": "none"})


def _fused_vs_as_written(sm, size: int, depth: int, tmp_path) -> dict:
    """Convert the fused and the unfused graph to TFLite fp32, ONNX and OpenVINO f32; both must
    agree within 1e-5 relative max error, and each fused artifact must show `depth` XCA blocks."""
    from conftest import images, rel_max_err

    from xcit_edge.backends import backend
    from xcit_edge.graph import prepare
    from xcit_edge.targets import all_targets

    graphs = {"fused": prepare(sm), "as-written": prepare(sm, fuse=False)}
    assert graphs["fused"].xca.fused == depth, graphs["fused"].xca
    x = graphs["fused"].model_input(images(2, size, seed=4))
    errors = {}
    for spec in (_tflite_fp32(), all_targets()["onnx"], all_targets()["openvino"]):
        mod, outs = backend(spec.backend), {}
        for kind, graph in graphs.items():
            d = tmp_path / kind / spec.name
            d.mkdir(parents=True)
            conv = mod.convert(graph, spec, None, d)
            assert conv.details["xca_blocks"] == (depth if kind == "fused" else 0), (spec.name, kind)
            outs[kind] = mod.run(mod.load(d / spec.file, spec), x)
        errors[spec.name] = rel_max_err(outs["fused"], outs["as-written"])
    assert max(errors.values()) <= 1e-5, errors
    return errors


# nano (native and onnx2tf): fused vs as-written in the three float runtimes is part of
# test_convert's nano tests, which convert nano anyway.


def test_384_model_fused_equals_unfused(tmp_path):
    """The trained fixture at 384 px: 2304 tokens per XCA (the p8 / 384 regime)."""

    from xcit_edge.model.build import build
    from xcit_edge.model.zoo import FIXTURE

    weights = FIXTURE_WEIGHTS
    build(FIXTURE.name, tmp_path / "fx384", weights=weights, img_size=384)
    _fused_vs_as_written(tmp_path / "fx384", 384, FIXTURE.depth, tmp_path)


def _convert_24_layer(tmp_path, targets: str) -> dict:
    import json

    from xcit_edge.model.savedmodel import export_saved_model, model_metadata
    from xcit_edge.model.xcit import build_model
    from xcit_edge.model.zoo import reduced_config

    cfg = reduced_config(depth=24, eta=1e-5, embed_dim=16)
    export_saved_model(build_model(cfg, seed=3), tmp_path / "sm", model_metadata(cfg, {"source": "random", "seed": 3}))
    res = run("--quiet", "convert", tmp_path / "sm", "--target", targets, "--out", tmp_path / "o", "--json",
              "--calibration-images", 8)
    assert res.exit_code == 0, res.output
    return {a["target"]: a["xca_fused"] for a in json.loads(res.stdout)["artifacts"]}


def test_24_layer_model_shows_24_fused_blocks_in_its_artifacts(tmp_path):
    """ONNX function nodes counted past nano's 12 (TFLite tensor names and OpenVINO friendly names are
    counted in every nano and fixture conversion, and for 24 layers in the slow all-target test)."""
    targets = "onnx"
    assert _convert_24_layer(tmp_path, targets) == dict.fromkeys(targets.split(","), 24)


@pytest.mark.slow
def test_24_layer_model_every_target(tmp_path):
    """Every target (minutes on 2 cores: ORT's quantizer is slow on 24 blocks). onnx-int8 also
    guards a fix: ORT fused float-kept LayerNorm means into QLinearGlobalAveragePool, which failed
    at run time on 24-layer models (backends/onnx.py `_unwrap_float_ops`)."""
    from xcit_edge.targets import all_targets

    counts = _convert_24_layer(tmp_path, "all")
    assert len(counts) == len(all_targets()) and set(counts.values()) == {24}, counts
