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


def agreement(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Cosine (mean/min), max/mean abs error, top-1 agreement, and accuracies when labels exist."""
    cos = cosine(out, ref)
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    res = {
        "images": len(out),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_err": float(err.max()),
        "mean_abs_err": float(err.mean()),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).mean()),
    }
    if labels is not None and len(labels) == len(out):
        acc, ref_acc = float((out.argmax(-1) == labels).mean()), float((ref.argmax(-1) == labels).mean())
        res.update(accuracy=acc, reference_accuracy=ref_acc, top1_drop=100.0 * (ref_acc - acc))
    return res


def failures(result: dict, tolerances: dict) -> list[str]:
    """The tolerances `result` breaks, as readable phrases (empty: it passes)."""
    bad = []
    if "min_cosine" in tolerances and result["cosine_mean"] < tolerances["min_cosine"]:
        bad.append(f"cosine {result['cosine_mean']:.6f} < {tolerances['min_cosine']}")
    if "min_top1_agreement" in tolerances and result["top1_agreement"] < tolerances["min_top1_agreement"]:
        bad.append(f"top-1 agreement {result['top1_agreement']:.4f} < {tolerances['min_top1_agreement']}")
    if "max_top1_drop" in tolerances and result.get("top1_drop", 0.0) > tolerances["max_top1_drop"]:
        bad.append(f"top-1 drop {result['top1_drop']:.2f} points > {tolerances['max_top1_drop']}")
    return bad
