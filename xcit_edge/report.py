"""`validate --report DIR`: the verdict as `report.json`, `report.md` and a single-file `report.html`.

The plots (matplotlib, Agg: no display needed) are written as PNGs beside `report.md` and
embedded as data URIs in the HTML, so the HTML opens offline, mailed or archived as one file:
reference vs artifact logits (scatter), absolute error (histogram), top-1 accuracy drop per
class (when labels exist), latency per artifact (median, p90 whisker), and for a failing
artifact the per-block cosine of the localization.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

import numpy as np

from xcit_edge.util.fs import atomic_file

log = logging.getLogger(__name__)

MAX_SCATTER_POINTS = 20_000
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _figure(panels: int = 1, height: float = 3.2, width: float | None = None, per_row: int = 3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, rows = min(panels, per_row), -(-panels // per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(width or max(4.0, 3.6 * cols), height * rows), squeeze=False)
    flat = list(axes.reshape(-1))
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _scatter(v) -> bytes:
    arts = [a for a in v.artifacts if a.outputs is not None]
    fig, axes = _figure(len(arts))
    rng = np.random.default_rng(0)
    ref = v.ref_outputs.reshape(-1)
    for ax, a, c in zip(axes, arts, _COLOURS * 4, strict=False):
        out = a.outputs.reshape(-1)
        idx = rng.choice(len(ref), min(len(ref), MAX_SCATTER_POINTS), replace=False)
        ax.scatter(ref[idx], out[idx], s=2, alpha=0.4, color=c)
        lo, hi = float(min(ref.min(), out.min())), float(max(ref.max(), out.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.6)
        ax.set_title(f"{a.target} ({'pass' if a.passed else 'FAIL'})", fontsize=9)
        ax.set_xlabel("reference", fontsize=8)
        ax.set_ylabel("artifact", fontsize=8)
    return _png(fig)


def _histogram(v) -> bytes:
    fig, axes = _figure(1, 3.0)
    ax = axes[0]
    for a, c in zip(v.artifacts, _COLOURS * 4, strict=False):
        if a.outputs is None:
            continue
        err = np.abs(a.outputs.astype(np.float64) - v.ref_outputs).reshape(-1)
        ax.hist(np.log10(np.maximum(err, 1e-12)), bins=60, histtype="step", color=c, label=a.target)
    ax.set_xlabel("log10 |artifact - reference|, per output value", fontsize=8)
    ax.set_ylabel("output values (images x outputs), log scale", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _png(fig)


def _per_class(v) -> bytes | None:
    arts = [a for a in v.artifacts if a.per_class]
    if not arts:
        return None
    classes = [r["class"] for r in arts[0].per_class][:50]
    fig, axes = _figure(1, 3.4, width=10.0)
    ax = axes[0]
    width = 0.8 / len(arts)
    x = np.arange(len(classes))
    for k, (a, c) in enumerate(zip(arts, _COLOURS * 4, strict=False)):
        drops = [r["drop"] for r in a.per_class][:50]
        ax.bar(x + k * width, drops, width, color=c, label=a.target)
    ax.set_xticks(x + 0.4 - width / 2, classes, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("top-1 drop (points)", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=7)
    return _png(fig)


def _latency(v) -> bytes | None:
    arts = [a for a in v.artifacts if a.latency_ms]
    if not arts:
        return None
    fig, axes = _figure(1, 3.0, width=6.0)
    ax = axes[0]
    med = [a.latency_ms["median"] for a in arts]
    p90 = [a.latency_ms["p90"] - a.latency_ms["median"] for a in arts]
    ax.bar([a.target for a in arts], med, yerr=[np.zeros(len(arts)), p90], color=_COLOURS[: len(arts)] * 4)
    ax.set_ylabel("ms per image (batch 1; whisker p90)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7, labelrotation=30)
    return _png(fig)


def _blocks(v) -> bytes | None:
    rows = [(a, a.localization) for a in v.artifacts if a.localization and a.localization.get("blocks")]
    if not rows:
        return None
    fig, axes = _figure(1, 3.0)
    ax = axes[0]
    for (a, loc), c in zip(rows, _COLOURS * 4, strict=False):
        pts = [(r["block"], r["cosine"]) for r in loc["blocks"] if r["cosine"] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=c, label=a.target)
        ax.axhline(loc["threshold"], color=c, linestyle=":", linewidth=0.8)
    ax.set_xlabel("XCA block", fontsize=8)
    ax.set_ylabel("cosine vs source", fontsize=8)
    ax.legend(fontsize=7)
    return _png(fig)


def plots(v) -> dict[str, bytes]:
    """Every plot that applies to this validation, by file name."""
    made = {"scatter.png": _scatter(v) if any(a.outputs is not None for a in v.artifacts) else None,
            "error_histogram.png": _histogram(v) if any(a.outputs is not None for a in v.artifacts) else None,
            "per_class_drop.png": _per_class(v), "latency.png": _latency(v), "blocks.png": _blocks(v)}
    return {k: b for k, b in made.items() if b}


_CAPTIONS = {"scatter.png": "Reference vs artifact outputs", "error_histogram.png": "Absolute error",
             "per_class_drop.png": "Top-1 accuracy drop per class", "latency.png": "Latency per artifact",
             "blocks.png": "Fused XCA blocks vs the source (localization)"}


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def text_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns for a terminal (validate and bench print their tables with it)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    return ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]


def table_rows(v) -> tuple[list[str], list[list[str]]]:
    logits = v.kind == "logits"
    head = ["target", "verdict", "cosine (mean)", "cosine (min)", "max abs err"]
    head += ["top-1 agree", "top-5 agree", "KL mean", "accuracy", "drop (pts)"] if logits else ["NN agree"]
    head += ["ms/image"]
    rows = []
    for a in v.artifacts:
        m = a.metrics
        row = [a.target, "pass" if a.passed else "FAIL", _fmt(m.get("cosine_mean"), 6), _fmt(m.get("cosine_min"), 6),
               _fmt(m.get("max_abs_err"))]
        if logits:
            row += [_fmt(m.get("top1_agreement")), _fmt(m.get("top5_agreement")), _fmt(m.get("kl_mean")),
                    _fmt(m.get("accuracy")), _fmt(m.get("top1_drop"), 2)]
        else:
            row += [_fmt(m.get("nn_agreement"))]
        row += [_fmt(a.latency_ms.get("median"), 2) if a.latency_ms else "–"]
        rows.append(row)
    return head, rows


def summary_lines(v) -> list[str]:
    r, c = v.reference, v.calibration
    lines = [f"Verdict: {'PASS' if v.passed else 'FAIL'} "
             f"({sum(a.passed for a in v.artifacts)} of {len(v.artifacts)} artifacts pass)",
             f"Reference: {r.get('from')} {r.get('file') or r.get('model')} (sha256 {str(r.get('sha256'))[:16]}…); "
             f"computed on {r.get('placement') or r.get('device', '?')}, precision {r.get('precision', '?')}, "
             f"TensorFlow {r.get('tensorflow', '?')}, host {r.get('host', '?')}",
             f"Calibration: {c['images']} images from {c['source']} (labels: {'yes' if c['labels'] else 'no'}; "
             f"{len(c['skipped'])} skipped; digest {c['digest'][:16]}…)"]
    return lines


def failure_lines(a) -> list[str]:
    """What failed, then where the search for the first diverging block looked: that second line is
    information (it may say every block matches), so it is labelled as such rather than read as a failure."""
    lines = [f"{a.target}: " + "; ".join(a.failures)]
    if a.localization:
        lines.append(f"{a.target} (localization, information): "
                     f"{a.localization.get('summary') or a.localization.get('why')}")
    return lines


def image_label(path: str) -> str:
    """An image as a reader finds it: its folder and file name (`circle/0007.jpg`), not a 100-character
    site-packages path; the full path stays in report.json."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def markdown(v, images: list[str]) -> str:
    head, rows = table_rows(v)
    out = ["# xcit-edge validation report", "", *(f"- {s}" for s in summary_lines(v)), "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    failed = [a for a in v.artifacts if not a.passed]
    if failed:
        out += ["", "## Failures", ""] + [f"- {line}" for a in failed for line in failure_lines(a)]
    for a in v.artifacts:
        if a.worst:
            out += ["", f"## {a.target}: images furthest from the reference", "",
                    "| image | cosine | KL | label | reference | artifact |", "|---|---|---|---|---|---|"]
            out += [f"| {image_label(w['image'])} | {_fmt(w['cosine'], 6)} | {_fmt(w.get('kl'))} | "
                    f"{w.get('label', '–')} | "
                    f"{w.get('reference_top1', '–')} | {w.get('artifact_top1', '–')} |" for w in a.worst]
    out += ["", "## Plots", ""] + [f"![{_CAPTIONS[n]}]({n})" for n in images]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}figure{margin:1em 0}figcaption{font-size:13px;color:#555}"""


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        cls = ' class="pass"' if x == "pass" else ' class="fail"' if x == "FAIL" else ""
        return f"<td{cls}>{html.escape(x)}</td>"

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(cell(x) for x in r) + "</tr>" for r in rows) + "</table>")


def html_report(v, pngs: dict[str, bytes]) -> str:
    head, rows = table_rows(v)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>xcit-edge validation</title>",
             f"<style>{_CSS}</style></head><body><h1>xcit-edge validation report</h1><ul>"]
    parts += [f"<li>{html.escape(s)}</li>" for s in summary_lines(v)]
    parts += ["</ul>", _html_table(head, rows)]
    failed = [a for a in v.artifacts if not a.passed]
    if failed:
        parts += ["<h2>Failures</h2><ul>"] + [f"<li class='fail'>{html.escape(x)}</li>"
                                              for a in failed for x in failure_lines(a)] + ["</ul>"]
    for name, data in pngs.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        parts.append(f"<figure><img alt='{_CAPTIONS[name]}' src='{uri}'><figcaption>{_CAPTIONS[name]}</figcaption>"
                     "</figure>")
    for a in v.artifacts:
        if a.worst:
            wh = ["image", "cosine", "KL", "label", "reference", "artifact"]
            wr = [[image_label(w["image"]), _fmt(w["cosine"], 6), _fmt(w.get("kl")), w.get("label", "–"),
                   w.get("reference_top1", "–"), w.get("artifact_top1", "–")] for w in a.worst]
            parts += [f"<h3>{html.escape(a.target)}: images furthest from the reference</h3>", _html_table(wh, wr)]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(v, out: Path) -> dict[str, Path]:
    """Write report.json, report.md (+ PNGs) and the single-file report.html into `out`."""
    out = Path(out)
    pngs = plots(v)
    docs = {"report.json": json.dumps(v.to_dict(), indent=2).encode(),
            "report.md": markdown(v, list(pngs)).encode(),
            "report.html": html_report(v, pngs).encode(), **pngs}
    written = {}
    for name, data in docs.items():
        with atomic_file(out / name) as tmp:
            tmp.write_bytes(data)
        written[name] = out / name
    log.info("report written to %s", out)
    return written
