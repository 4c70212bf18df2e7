"""Where a failing artifact leaves its source: the first diverging fused XCA block.

Polygraphy-style layer-wise comparison, at the granularity every artifact shares: the fused
XCA blocks (`graph/xca.py`) keep the names `xcit_edge/xca_i/...` through every converter, so
the output of block i can be read from the source graph (TensorFlow, the fused graph, which
`prepare` verified against the original within 1e-5) and from the artifact (each backend's
`block_outputs`). Blocks are compared in order by cosine; the first below the target's
`min_cosine` is named, and when every block agrees the fault lies after them (class
attention, head) or in the labels' order.
"""

from __future__ import annotations

import logging

import numpy as np

from xcit_edge.data.calibration import CalibrationSet
from xcit_edge.data.preprocessing import Preprocessing
from xcit_edge.graph.run import run_graph
from xcit_edge.graph.shapefold import topological
from xcit_edge.graph.xca_names import block_exits
from xcit_edge.metrics import cosine

log = logging.getLogger(__name__)

PROBE_IMAGES = 8


def source_block_outputs(graph, x: np.ndarray) -> dict[int, np.ndarray]:
    """The output of every fused block in the prepared (fused) source graph, for inputs `x`."""
    ops = [(n.name, n.op, [i.split(":")[0] for i in n.input if not i.startswith("^")], [n.name])
           for n in topological(graph.frozen.graph_def)]
    exits = block_exits(ops)  # node names: a block ends in a single-output op (its merge-heads reshape)
    if not exits:
        return {}
    outs = run_graph(graph.frozen, graph.input_tensor, x, [f"{t}:0" for t in exits.values()],
                     batch=graph.input_shape[0])  # a fixed-batch source takes that many images per run
    return {b: np.asarray(o, np.float32) for b, o in zip(exits, outs, strict=True)}


def compare_blocks(src: dict[int, np.ndarray], art: dict[int, np.ndarray], min_cosine: float) -> dict:
    """Per-block cosine (mean over images) and the first block below `min_cosine`."""
    rows = []
    for b in sorted(src):
        a = art.get(b)
        if a is None or a.size != src[b].size:
            rows.append({"block": b, "cosine": None, "why": "not in the artifact" if a is None else
                         f"shape {list(a.shape)} vs source {list(src[b].shape)}"})
            continue
        a = a.reshape(src[b].shape) if a.shape != src[b].shape else a
        rows.append({"block": b, "cosine": float(cosine(a, src[b]).mean())})
    compared = [r for r in rows if r["cosine"] is not None]
    bad = next((r for r in compared if r["cosine"] < min_cosine), None)
    first = bad["block"] if bad else None
    if bad:
        summary = f"first diverging block: XCA block {first} (cosine {bad['cosine']:.6f} < {min_cosine})"
    elif compared:
        summary = (f"all {len(compared)} XCA blocks match the source (cosine >= {min_cosine}): the divergence is "
                   "after them (class attention, head) or in the class order")
    else:
        summary = "no XCA block could be compared"
    return {"status": "done", "threshold": min_cosine, "first_diverging_block": first, "blocks": rows,
            "summary": summary}


def localize(source_path, art, cal: CalibrationSet, pre: Preprocessing, images: int = PROBE_IMAGES,
             trust_model: bool = False) -> dict:
    """Compare the artifact's fused blocks with the source's on the first `images` calibration images."""
    from xcit_edge.graph import prepare

    m = art.manifest.source
    try:
        graph = prepare(source_path, signature=m.signature or None, output_key=m.output_key or None, preprocessing=pre,
                        allow_unknown=True, fuse=True, allow_partial_fusion=True, trust_model=trust_model)
    except Exception as e:  # noqa: BLE001 - localization is a diagnosis: its failure must not hide the verdict
        log.warning("localization skipped: %s", e)
        return {"status": "unavailable", "why": f"source graph could not be fused ({e})"}
    sub = cal.take(images)
    src = source_block_outputs(graph, graph.model_input(sub.model_ready(pre, False)))
    if not src:
        return {"status": "unavailable", "why": "the source has no fusable XCA blocks"}
    blocks = art.module.block_outputs(art.path / art.spec.file, art.spec, art.inputs(sub, pre))
    if not blocks:
        return {"status": "unavailable", "why": "the artifact has no fused XCA blocks (converted with --no-fuse?)"}
    res = compare_blocks(src, blocks, float(art.spec.tolerances.get("min_cosine", 0.99)))
    res["images"] = len(sub)
    return res
