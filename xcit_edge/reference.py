"""Reference outputs: the source model run on a calibration set, stored with what makes them comparable.

A reference file (`.npz`, read without pickle) holds the outputs (logits or features), the
image ids and labels, and a JSON record: the source model's sha256 (`sha256_tree` of the
SavedModel, as in every artifact manifest), the calibration images' digest, the
preprocessing, and provenance (device, precision, TensorFlow version, host). `validate
--reference` refuses a file whose model or images differ from what it is validating, so a
stale or foreign reference cannot pass an artifact.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xcit_edge import __version__
from xcit_edge.calibration import CalibrationSet, load_calibration
from xcit_edge.errors import UsageError
from xcit_edge.fsutil import atomic_file, sha256_tree
from xcit_edge.preprocessing import Preprocessing

log = logging.getLogger(__name__)

FORMAT = "xcit-edge.reference/1"
MAX_REFERENCE_BYTES = 8 << 30
_KEYS = {"outputs", "names", "meta"}


@dataclass
class Reference:
    """Outputs of the source model on one calibration set, in image order."""

    outputs: np.ndarray  # float32 (N, K)
    names: list[str]
    labels: np.ndarray | None
    model_sha256: str
    calibration_digest: str
    meta: dict = field(default_factory=dict)  # kind, preprocessing, provenance, sources

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "logits")

    def provenance(self) -> dict:
        keys = ("device", "precision", "tensorflow", "host", "created", "tool")
        return {k: self.meta[k] for k in keys if k in self.meta}

    def save(self, path: Path) -> Path:
        """Write atomically (temp sibling, then rename): a crash leaves no half-written reference."""
        path = Path(path)
        meta = {**self.meta, "format": FORMAT, "model_sha256": self.model_sha256,
                "calibration_digest": self.calibration_digest, "images": len(self.names)}
        arrays = {"outputs": self.outputs.astype(np.float32), "names": np.array(self.names, dtype=str),
                  "meta": np.array(json.dumps(meta))}
        if self.labels is not None:
            arrays["labels"] = self.labels.astype(np.int64)
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path


def load_reference(path: Path) -> Reference:
    """A reference file from untrusted `path`: no pickle, size-capped, every field checked."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"reference file not found: {path}")
    if path.stat().st_size > MAX_REFERENCE_BYTES:
        raise UsageError(f"{path}: larger than {MAX_REFERENCE_BYTES >> 30} GiB")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile) or not _KEYS <= set(data.files):
                raise UsageError(f"{path}: not an xcit-edge reference file (needs {', '.join(sorted(_KEYS))})")
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: unreadable reference file ({str(e).splitlines()[0]})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UsageError(f"{path}: not a reference of format {FORMAT}")
    out, names = arrays["outputs"], [str(n) for n in arrays["names"].reshape(-1)]
    labels = arrays.get("labels")
    bad_labels = labels is not None and (labels.ndim != 1 or len(labels) != len(out))
    if out.ndim != 2 or out.dtype.kind != "f" or len(out) != len(names) or bad_labels:
        raise UsageError(f"{path}: inconsistent reference (outputs {out.shape}, {len(names)} ids"
                         f"{'' if labels is None else f', {len(labels)} labels'})")
    return Reference(out.astype(np.float32), names, None if labels is None else labels.astype(np.int64),
                     str(meta.get("model_sha256", "")), str(meta.get("calibration_digest", "")), meta)


def provenance(device: str = "cpu", precision: str = "default") -> dict:
    """Where and how the reference was computed (validate shows it; nothing is widened by it)."""
    import tensorflow as tf

    return {"device": device, "precision": precision, "tensorflow": tf.__version__, "host": platform.node(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "tool": f"xcit-edge {__version__}"}


def reference_from_graph(graph, cal: CalibrationSet, model_sha256: str, model_ref: str) -> Reference:
    """Run the prepared source graph (float32, on this host's CPU) over `cal` (not baked: float inputs)."""
    x = graph.model_input(cal.model_ready(graph.preprocessing, False))
    out = graph.run(x)
    meta = {"kind": "features" if graph.features else "logits", "model": model_ref,
            "calibration_source": cal.source, "preprocessing": graph.preprocessing.to_dict(),
            "signature": graph.signature_key, "output_key": graph.output_key, **provenance()}
    return Reference(out, list(cal.names), cal.labels, model_sha256, cal.images_digest, meta)


def compute_reference(model: str, data: str, *, labels_file: Path | None = None, max_images: int | None = None,
                      weights: Path | None = None, signature: str | None = None, output_key: str | None = None,
                      preprocessing: Preprocessing | None = None, progress=None) -> Reference:
    """`xcit-edge reference`: resolve MODEL, decode DATA with its preprocessing, run it, keep the outputs."""
    from xcit_edge.graph import prepare
    from xcit_edge.source import resolve

    src = resolve(model, weights=weights)
    graph = prepare(src.path, signature=signature, output_key=output_key, preprocessing=preprocessing,
                    allow_unknown=True, fuse=False)
    cal = load_calibration(data, graph.preprocessing, class_names=graph.labels, labels_file=labels_file,
                           limit=max_images, progress=progress)
    log.info("running %s on %d images", src.ref, len(cal))
    return reference_from_graph(graph, cal, sha256_tree(src.path), src.ref)
