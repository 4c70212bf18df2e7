"""Agreement between an artifact's outputs and the reference outputs (Optimum-style checks)."""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (float64)."""
    a64, b64 = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.where(den > 0, (a64 * b64).sum(1) / np.maximum(den, 1e-300), 1.0)


def rel_max_err(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|: the fidelity figure the project reports (exact rewrites, fp32 artifacts)."""
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def kl_divergence(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-row KL(softmax(ref) || softmax(out)) in nats: how much probability mass the artifact moved."""
    p, q = _softmax(ref), _softmax(out)
    return (p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300)))).sum(-1)


def neighbours(feats: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's `k` most cosine-similar other rows, nearest first (retrieval is what
    features are for)."""
    f = feats.astype(np.float64).reshape(len(feats), -1)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-300)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def nn_agreement(out: np.ndarray, ref: np.ndarray, k: int = 5) -> float:
    """Share of images whose nearest neighbour under the reference features is among their `k`
    nearest under the artifact's (recall@k of the 1-NN; exact 1-NN identity flips between
    near-duplicates at any precision below fp32)."""
    nn = neighbours(ref, 1)[:, 0]
    return float((neighbours(out, min(k, len(out) - 1)) == nn[:, None]).any(1).mean())


def agreement(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None = None, *, kind: str = "logits",
              worst: int = 0) -> dict:
    """How far `out` is from `ref`, row by row (one row per image).

    Always: cosine (mean/min), max/mean abs error. Logits: top-1 agreement, top-5 agreement (the
    reference's top-1 class among the artifact's five best), mean/max KL divergence of the softmax,
    and with labels accuracy, reference accuracy and the drop in points. Features: `nn_agreement`.
    `worst` > 0 adds the indices of the rows furthest from the reference (lowest cosine, then highest KL).
    """
    cos = cosine(out, ref)
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    res = {
        "images": len(out),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_err": float(err.max()),
        "mean_abs_err": float(err.mean()),
    }
    if kind == "features":
        if len(out) > 1:
            res["nn_agreement"] = nn_agreement(out, ref)
        order = np.argsort(cos, kind="stable")
    else:
        kl = kl_divergence(out, ref)
        top5 = np.argsort(-out, axis=-1)[:, :5]
        res.update(top1_agreement=float((out.argmax(-1) == ref.argmax(-1)).mean()),
                   top5_agreement=float((top5 == ref.argmax(-1)[:, None]).any(-1).mean()),
                   kl_mean=float(kl.mean()), kl_max=float(kl.max()))
        if labels is not None and len(labels) == len(out):
            acc, ref_acc = float((out.argmax(-1) == labels).mean()), float((ref.argmax(-1) == labels).mean())
            res.update(accuracy=acc, reference_accuracy=ref_acc, top1_drop=100.0 * (ref_acc - acc),
                       top5_accuracy=float((top5 == labels[:, None]).any(-1).mean()))
        order = np.lexsort((-kl, cos))  # lowest cosine first; the larger KL breaks ties
    if worst:
        res["worst"] = [int(i) for i in order[:worst]]
    return res


def failures(result: dict, tolerances: dict) -> list[str]:
    """The tolerances `result` breaks, as readable phrases (empty: it passes). Checks that do
    not apply to the result (top-1 for features, drop without labels) are skipped."""
    bad = []
    if "min_cosine" in tolerances and result["cosine_mean"] < tolerances["min_cosine"]:
        bad.append(f"cosine {result['cosine_mean']:.6f} < {tolerances['min_cosine']}")
    if "top1_agreement" in result and "min_top1_agreement" in tolerances \
            and result["top1_agreement"] < tolerances["min_top1_agreement"]:
        bad.append(f"top-1 agreement {result['top1_agreement']:.4f} < {tolerances['min_top1_agreement']}")
    if "max_top1_drop" in tolerances and result.get("top1_drop", 0.0) > tolerances["max_top1_drop"]:
        bad.append(f"top-1 drop {result['top1_drop']:.2f} points > {tolerances['max_top1_drop']}")
    if "nn_agreement" in result and "min_nn_agreement" in tolerances \
            and result["nn_agreement"] < tolerances["min_nn_agreement"]:
        bad.append(f"nearest-neighbour agreement {result['nn_agreement']:.4f} < {tolerances['min_nn_agreement']}")
    return bad
