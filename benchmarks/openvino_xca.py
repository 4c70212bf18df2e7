"""Why fused XCA gains little in OpenVINO at batch 1: its profiler per layer type, and the MHA-tokenizer form.

    python benchmarks/openvino_xca.py WORKDIR      # what benchmarks/xca_fusion.py leaves: fused/, as-written/
    python benchmarks/openvino_xca.py --core-only  # only the XCA-core comparison (2. below)

1. `PERF_COUNT` of the fused and as-written OpenVINO artifacts (2 threads, LATENCY hint, 100 calls each after 20
   warm-up calls, the two taking turns): executed time and node count per layer type and kernel, summed.
2. The XCA core alone, 12 blocks at nano's shapes (196 tokens, 4 heads of 32 channels), in two exact forms:
   the shipped token-major one (q, k, v as (B, h, N, d); G = qᵀk as MatMul transpose_a; out = v·Aᵀ as
   transpose_b) and a channel-major one ((B, h, d, N); G = q·kᵀ; out = A·v), which is what OpenVINO's MHA
   tokenizer takes into one `Subgraph` kernel: its `TokenizeMHASnippets` refuses a first MatMul with
   transpose_a and a second with either transpose (openvinotoolkit/openvino,
   src/common/snippets/src/pass/mha_tokenization.cpp). Prints max |difference| and medians of 300 calls,
   the two forms taking turns.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
from int8_kernels import medians_taking_turns  # benchmarks/ is on the path when a script in it runs

from xcit_edge.bench import machine_line

CONFIG = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}
B, N, H, DH = 1, 196, 4, 32


def _request(xml: Path):
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {**CONFIG, "PERF_COUNT": True})
    channels_last = compiled.inputs[0].get_partial_shape()[3].get_length() == 3
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3), dtype=np.float32)
    return compiled.create_infer_request(), x if channels_last else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _profiles(xmls: list[Path], calls: int = 100) -> list[tuple[collections.Counter, collections.Counter]]:
    """Per layer type:kernel, executed microseconds and node count per call; the models take turns call by
    call, so drift on a shared machine hits both alike."""
    requests = [_request(xml) for xml in xmls]
    for request, x in requests * 20:
        request.infer([x])
    tables = [(collections.Counter(), collections.Counter()) for _ in xmls]
    for _ in range(calls):
        for (request, x), (us, count) in zip(requests, tables, strict=True):
            request.infer([x])
            for p in request.profiling_info:
                if p.status == p.Status.EXECUTED:
                    key = f"{p.node_type}:{p.exec_type}"
                    us[key] += p.real_time.total_seconds() * 1e6 / calls
                    count[key] += 1 / calls
    return tables


def profile_table(workdir: Path) -> None:
    fused, written = _profiles([workdir / tag / "openvino" / "model.xml" for tag in ("fused", "as-written")])
    keys = sorted(set(fused[0]) | set(written[0]), key=lambda k: -max(fused[0][k], written[0][k]))
    print(f"{'layer type:kernel':40} {'fused us':>9} {'nodes':>6} {'as-written us':>14} {'nodes':>6}")
    for k in keys:
        print(f"{k:40} {fused[0][k]:9.0f} {fused[1][k]:6.0f} {written[0][k]:14.0f} {written[1][k]:6.0f}")
    print(f"{'sum':40} {sum(fused[0].values()):9.0f} {sum(fused[1].values()):6.0f} "
          f"{sum(written[0].values()):14.0f} {sum(written[1].values()):6.0f}")


def _inv_norm(x, axis: int):
    import openvino.opset13 as op

    norm = op.reduce_l2(x, op.constant(np.array([axis])), True)
    return op.divide(op.constant(np.float32(1)), op.maximum(norm, op.constant(np.float32(1e-12))))


def _xca(x, tau: np.ndarray, channel_major: bool):
    """One XCA core (qkv in, (B, N, h·d) out), official semantics, scale applied to the d×d logits."""
    import openvino.opset13 as op

    order = [2, 0, 3, 4, 1] if channel_major else [2, 0, 3, 1, 4]
    qkv = op.transpose(op.reshape(x, op.constant(np.array([B, N, 3, H, DH])), False), op.constant(np.array(order)))
    q, k, v = (op.squeeze(t, op.constant(np.array([0]))) for t in op.split(qkv, op.constant(0), 3).outputs())
    swap = op.constant(np.array([0, 1, 3, 2]))
    if channel_major:  # (B,h,d,N)
        sq, sk = op.multiply(_inv_norm(q, 3), op.constant(tau)), op.transpose(_inv_norm(k, 3), swap)
        attn = op.softmax(op.multiply(op.multiply(op.matmul(q, k, False, True), sq), sk), -1)
        out = op.transpose(op.matmul(attn, v, False, False), op.constant(np.array([0, 3, 1, 2])))
    else:  # (B,h,N,d)
        sq = op.transpose(op.multiply(_inv_norm(q, 2), op.constant(tau.reshape(1, H, 1, 1))), swap)
        attn = op.softmax(op.multiply(op.multiply(op.matmul(q, k, True, False), sq), _inv_norm(k, 2)), -1)
        out = op.transpose(op.matmul(v, attn, False, True), op.constant(np.array([0, 2, 1, 3])))
    return op.reshape(out, op.constant(np.array([B, N, H * DH])), False)


def core_table(blocks: int = 12) -> None:
    import openvino as ov
    import openvino.opset13 as op

    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, N, 3 * H * DH), dtype=np.float32)
    tau = rng.uniform(0.5, 2, (1, H, 1, 1)).astype(np.float32)
    runs, outs = {}, {}
    for name, channel_major in (("token-major (shipped)", False), ("channel-major (MHA tokenizer)", True)):
        p = op.parameter([B, N, 3 * H * DH], np.float32)
        y = p
        for _ in range(blocks):
            o = _xca(y, tau, channel_major)
            y = op.concat([o, o, o], -1)  # back to the qkv width, so blocks chain
        compiled = ov.Core().compile_model(ov.Model([y], [p]), "CPU", CONFIG)
        request = compiled.create_infer_request()
        outs[name] = request.infer([x])[0].copy()
        kinds = sorted({n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ops()})
        runs[name] = request
        print(f"{name}: runtime layer types {', '.join(kinds)}")
    a, b = outs.values()
    print(f"max |difference| {np.abs(a - b).max():.2e} (largest output {np.abs(a).max():.2f})")
    for _ in range(3):
        ms = medians_taking_turns([lambda r=r: r.infer([x]) for r in runs.values()], 300)
        print("  ".join(f"{n} {t:.3f} ms" for n, t in zip(runs, ms, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", nargs="?", type=Path)
    parser.add_argument("--core-only", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    if args.workdir and not args.core_only:
        profile_table(args.workdir)
    core_table()


if __name__ == "__main__":
    main()
