"""Export a Keras XCiT as a SavedModel with the TF Hub collection's serving contract.

`serving_default`: input `input` float32 [-1, H, W, 3] (preprocessed, NHWC), output
`output` ([-1, 1000] logits or [-1, D] features). The model's own description
(architecture, preprocessing, weight provenance) travels inside the SavedModel as the
asset `assets/xcit_edge.json`, readable without loading or running the graph.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path

from xcit_edge import __version__
from xcit_edge.data.preprocessing import Preprocessing, timm_default
from xcit_edge.errors import UsageError
from xcit_edge.model.zoo import XCiTConfig
from xcit_edge.util.fs import atomic_dir, output_lock, read_json_document

log = logging.getLogger(__name__)

METADATA_ASSET = "xcit_edge.json"
METADATA_FORMAT = "xcit-edge.model/1"
MAX_METADATA_BYTES = 1 << 20
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def model_metadata(cfg: XCiTConfig, weights: dict, preprocessing: Preprocessing | None = None,
                   labels: list[str] | None = None) -> dict:
    """The JSON document stored in the SavedModel (`labels`: class names, when not ImageNet's)."""
    pre = preprocessing or timm_default(cfg.img_size)
    if labels is not None and (cfg.features or len(labels) != cfg.num_classes):
        raise UsageError(f"{len(labels)} labels for a model with {cfg.output_dim} outputs")
    default_labels = "imagenet-1k" if cfg.num_classes == 1000 else None
    return {
        "format": METADATA_FORMAT,
        "tool": f"xcit-edge {__version__}",
        "arch": cfg.name,
        "features": cfg.features,
        "config": cfg.to_dict(),
        "preprocessing": pre.to_dict(),
        "labels": None if cfg.features else (labels or default_labels),
        "weights": weights,
        "signature": {
            "key": SIGNATURE_KEY,
            "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [-1, cfg.img_size, cfg.img_size, 3]},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, cfg.output_dim]},
        },
    }


def export_saved_model(model, out: Path, metadata: dict, force: bool = False) -> Path:
    """Write `model` as a SavedModel at `out` atomically; returns `out`."""
    import tensorflow as tf

    cfg: XCiTConfig = model.cfg
    spec = tf.TensorSpec([None, cfg.img_size, cfg.img_size, 3], tf.float32, name=INPUT_NAME)

    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[spec])
    def serve(input):  # noqa: A002 - the argument name is the signature's input key
        return {OUTPUT_NAME: model(input, training=False)}

    module.serve = serve
    with (output_lock(Path(out)), tempfile.TemporaryDirectory() as meta_dir,
          atomic_dir(Path(out), force=force) as tmp):
        meta_path = Path(meta_dir) / METADATA_ASSET
        meta_path.write_text(json.dumps(metadata, indent=2, sort_keys=True))
        module.xcit_edge_metadata = tf.saved_model.Asset(str(meta_path))
        try:
            tf.saved_model.save(module, str(tmp), signatures={SIGNATURE_KEY: serve})
        except OSError as e:
            raise UsageError(f"cannot write SavedModel to {out}: {os.strerror(e.errno) if e.errno else e}") from e
        except tf.errors.OpError as e:  # TF's own file layer reports ENOSPC & co. this way
            reason = re.sub(r"\s*\[Op:\w+\]$", "", e.message.splitlines()[0]).rsplit(";", 1)[-1].strip()
            raise UsageError(f"cannot write SavedModel to {out}: {reason}") from e
        _pin_fingerprint_uuid(tmp)
    log.info("wrote SavedModel %s", out)
    return Path(out)


def _pin_fingerprint_uuid(saved_model_dir: Path) -> None:
    """Derive the fingerprint's UUID from its content hashes instead of randomness.

    It is the only byte TF writes at random, and "same seed, same file" is what lets a
    user (or a cache) tell two builds apart by checksum.
    """
    from tensorflow.core.protobuf import fingerprint_pb2

    path = Path(saved_model_dir) / "fingerprint.pb"
    if not path.is_file():
        return
    fp = fingerprint_pb2.FingerprintDef()
    fp.ParseFromString(path.read_bytes())
    if "uuid" not in fp.DESCRIPTOR.fields_by_name:
        return
    key = f"{fp.saved_model_checksum}-{fp.checkpoint_hash}-{fp.signature_def_hash}"
    fp.uuid = str(uuid.uuid5(uuid.NAMESPACE_OID, key).int)
    path.write_bytes(fp.SerializeToString())


def read_metadata(saved_model_dir: Path) -> dict | None:
    """The xcit-edge description of a SavedModel, or None for foreign models.

    The file is untrusted input: size-capped, must be a JSON object of our format.
    """
    path = Path(saved_model_dir) / "assets" / METADATA_ASSET
    if not path.is_file():
        return None
    return read_json_document(path, METADATA_FORMAT, "xcit-edge metadata", MAX_METADATA_BYTES)


def preprocessing_of(saved_model_dir: Path, img_size: int | None = None) -> tuple[Preprocessing, str]:
    """The recorded preprocessing, else timm's default for the input size; with its origin."""
    meta = read_metadata(saved_model_dir)
    if meta and isinstance(meta.get("preprocessing"), dict):
        try:
            return Preprocessing.from_dict(meta["preprocessing"]), "recorded in the SavedModel"
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise UsageError(f"{saved_model_dir}: recorded preprocessing is malformed ({e})") from e
    if img_size is None:
        raise UsageError(f"{saved_model_dir}: no recorded preprocessing and no input size to assume one")
    return timm_default(img_size), "not recorded; assumed timm's XCiT default"
