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
from xcit_edge.data.calibration import CalibrationSet, load_calibration
from xcit_edge.data.preprocessing import Preprocessing
from xcit_edge.errors import UsageError, first_line
from xcit_edge.util.fs import atomic_file, sha256_tree
from xcit_edge.util.memory import REFERENCE_IMAGE_FACTOR, check_model, image_budget, tree_bytes

log = logging.getLogger(__name__)

FORMAT = "xcit-edge.reference/1"
REFERENCE_FILE = "reference.npz"  # its name beside the artifacts (`convert --reference-device`)
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
        keys = ("device", "placement", "precision", "tensorflow", "host", "created", "tool")
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
        raise UsageError(f"{path}: unreadable reference file ({first_line(e)})") from e
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


def provenance(device: str = "cpu", precision: str = "default", placement: str = "CPU") -> dict:
    """Where and how the reference was computed (validate shows it; nothing is widened by it)."""
    import tensorflow as tf

    return {"device": device, "placement": placement, "precision": precision, "tensorflow": tf.__version__,
            "host": platform.node(), "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "tool": f"xcit-edge {__version__}"}


def _meta(graph, cal: CalibrationSet, model_ref: str, **prov) -> dict:
    return {"kind": "features" if graph.features else "logits", "model": model_ref,
            "calibration_source": cal.source, "preprocessing": graph.preprocessing.to_dict(),
            "signature": graph.signature_key, "output_key": graph.output_key, **provenance(**prov)}


@dataclass
class ReferenceOptions:
    device: str = "cpu"  # cpu | gpu | tpu
    tpu: str | None = None  # TPU name (default on a TPU VM: "local")
    zone: str | None = None
    project: str | None = None
    batch_size: int = 32  # global batch (rounded up to a multiple of the replicas)
    precision: str = "default"  # default | highest
    replicas: int = 1  # cpu: split the host CPU into this many logical devices
    trust_model: bool = False  # run a model whose graph reaches outside it (safety.check_ops)
    max_memory: int | None = None  # bytes the run may use (memory.check_fits); None: what is available


def compute_reference(model: str, data: str, *, labels_file: Path | None = None, max_images: int | None = None,
                      weights: Path | None = None, signature: str | None = None, output_key: str | None = None,
                      preprocessing: Preprocessing | None = None, options: ReferenceOptions | None = None,
                      progress=None) -> Reference:
    """`xcit-edge reference`: resolve MODEL, decode DATA with its preprocessing, run the SavedModel's
    own serving function under the device's strategy (`distribute.py`), keep the outputs in input order."""
    from xcit_edge.distribute import make_placement, set_precision
    from xcit_edge.graph import prepare
    from xcit_edge.source.resolve import resolve

    opts = options or ReferenceOptions()
    set_precision(opts.precision)  # before anything is traced
    placement = make_placement(opts.device, tpu=opts.tpu, zone=opts.zone, project=opts.project,
                               replicas=opts.replicas)  # before TensorFlow runs anything (CPU split)
    src = resolve(model, weights=weights)
    model_bytes = tree_bytes(src.path)
    check_model(model_bytes, opts.max_memory)  # before the model is loaded
    graph = prepare(src.path, signature=signature, output_key=output_key, preprocessing=preprocessing,
                    allow_unknown=True, fuse=False, trust_model=opts.trust_model)  # signature, layout, preprocessing
    cb = (lambda d, n: progress("calibration", d, n)) if progress else None
    budget = image_budget(model_bytes, graph.preprocessing.size, opts.max_memory, REFERENCE_IMAGE_FACTOR,
                          streaming=True, outputs=1)
    cal = load_calibration(data, graph.preprocessing, class_names=graph.labels, labels_file=labels_file,
                           limit=max_images, progress=cb, before_decode=budget)
    return run_reference(graph, placement, cal, src.ref, sha256_tree(src.path), opts.batch_size, opts.precision,
                         progress)


def run_reference(graph, placement, cal: CalibrationSet, model_ref: str, model_sha256: str, batch_size: int = 32,
                  precision: str = "default", progress=None) -> Reference:
    """The source SavedModel's own serving function (not the frozen graph) over `cal` under `placement`:
    what `reference` stores and what `validate --source` compares against, computed the same way so
    that both give the same figures."""
    from xcit_edge.distribute import load_serving, replica_batch, run_distributed

    fixed = graph.input_shape[0]  # a fixed-batch signature (onnx2tf: 1) takes exactly that per replica
    global_batch = replica_batch(placement, fixed * placement.replicas if fixed else batch_size)
    log.info("running %s on %d images: %s, global batch %d", model_ref, len(cal), placement.description,
             global_batch)
    serve = load_serving(graph.source, placement, graph.signature_key, graph.signature_input, graph.output_key)
    batches = (graph.model_input(x) for x in cal.batches(graph.preprocessing, False, cal.batch_rows(global_batch)))
    out = run_distributed(placement, serve, batches, len(cal), global_batch,
                          progress=(lambda d, n: progress("reference", d, n)) if progress else None)
    meta = _meta(graph, cal, model_ref, device=placement.device, precision=precision,
                 placement=placement.description)
    return Reference(out, list(cal.names), cal.labels, model_sha256, cal.images_digest, meta)
