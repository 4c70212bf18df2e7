"""TFLite Metadata for image classifiers, so MediaPipe Tasks / TFLite Support load the artifact.

MediaPipe's ImageClassifier (its Python API runs the same C++ core as Android and iOS) needs,
in the model's `TFLITE_METADATA` buffer: an image input with RGB colour space and, for float
inputs, the normalization `(pixel - mean) / std` on 0..255 pixels; a score output whose
labels come from an associated file (`TENSOR_AXIS_LABELS`) packed as a zip appended to the
flatbuffer. The schema classes come from MediaPipe's generated `metadata_schema` module and
LiteRT's `schema_py_generated`; MediaPipe's own MetadataWriter is not used because the
mediapipe 1.2 wheel lacks the native module it imports (`_pywrap_metadata_version`).

Only version-1.0.0 features are used, hence `minParserVersion = "1.0.0"`.

MediaPipe Tasks refuse per-channel normalization ("Per-channel image normalization is not
available": measured with mediapipe 1.2.2), and XCiT's ImageNet mean/std are per channel; so
the artifacts MediaPipe runs are the `--bake-preprocessing` ones (uint8 input, no
normalization metadata needed). Float-input artifacts still carry the per-channel metadata,
which TFLite Support's Task Library and custom code can read.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np

from xcit_edge.artifact.manifest import LABELS_FILE

log = logging.getLogger(__name__)

METADATA_NAME = "TFLITE_METADATA"
PARSER_VERSION = "1.0.0"


def _schemas():
    try:
        from ai_edge_litert import schema_py_generated as model_fb
        from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb
    except ImportError:
        return None
    return model_fb, meta_fb


def _input_metadata(meta_fb, graph):
    tm = meta_fb.TensorMetadataT()
    tm.name = "image"
    tm.description = f"RGB image, {graph.preprocessing.size[0]}x{graph.preprocessing.size[1]}"
    tm.content = meta_fb.ContentT()
    tm.content.contentPropertiesType = meta_fb.ContentProperties.ImageProperties
    tm.content.contentProperties = meta_fb.ImagePropertiesT()
    tm.content.contentProperties.colorSpace = meta_fb.ColorSpaceType.RGB
    if not graph.baked:
        pre = graph.preprocessing
        mean = [float(m / pre.scale) for m in pre.mean]
        std = [float(s / pre.scale) for s in pre.std]
        unit = meta_fb.ProcessUnitT()
        unit.optionsType = meta_fb.ProcessUnitOptions.NormalizationOptions
        unit.options = meta_fb.NormalizationOptionsT()
        unit.options.mean, unit.options.std = mean, std
        tm.processUnits = [unit]
        tm.stats = meta_fb.StatsT()
        tm.stats.min = [float((0 - m) / s) for m, s in zip(mean, std, strict=True)]
        tm.stats.max = [float((255 - m) / s) for m, s in zip(mean, std, strict=True)]
    return tm


def _output_metadata(meta_fb, graph):
    tm = meta_fb.TensorMetadataT()
    tm.name = "score"
    tm.description = "class logits"
    tm.content = meta_fb.ContentT()
    tm.content.contentPropertiesType = meta_fb.ContentProperties.FeatureProperties
    tm.content.contentProperties = meta_fb.FeaturePropertiesT()
    tm.stats = meta_fb.StatsT()
    if graph.labels:
        af = meta_fb.AssociatedFileT()
        af.name = LABELS_FILE
        af.description = "class names, one per line, in output order"
        af.type = meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS
        tm.associatedFiles = [af]
    return tm


def metadata_buffer(meta_fb, graph) -> bytes:
    import flatbuffers

    md = meta_fb.ModelMetadataT()
    md.name = graph.arch or "xcit"
    md.description = "XCiT image classifier converted by xcit-edge"
    md.author = "xcit-edge"
    sg = meta_fb.SubGraphMetadataT()
    sg.inputTensorMetadata = [_input_metadata(meta_fb, graph)]
    sg.outputTensorMetadata = [_output_metadata(meta_fb, graph)]
    md.subgraphMetadata = [sg]
    md.minParserVersion = PARSER_VERSION
    b = flatbuffers.Builder(0)
    b.Finish(md.Pack(b), b"M001")
    return bytes(b.Output())


def _with_metadata(model_fb, model_bytes: bytes, meta: bytes) -> bytes:
    import flatbuffers

    model = model_fb.ModelT.InitFromObj(model_fb.Model.GetRootAs(model_bytes, 0))
    buf = model_fb.BufferT()
    buf.data = np.frombuffer(meta, dtype=np.uint8)
    model.buffers = [*list(model.buffers or []), buf]
    entry = model_fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)
    b = flatbuffers.Builder(len(model_bytes) + len(meta) + 1024)
    b.Finish(model.Pack(b), b"TFL3")
    return bytes(b.Output())


def add_image_classifier_metadata(model_path: Path, graph) -> dict | None:
    """Embed metadata (and the labels file) into the .tflite at `model_path`; returns what was written.

    Feature extractors get no classifier metadata. When the schema modules are missing
    (mediapipe not installed) the artifact is left as it is and None is returned.
    """
    if graph.features:
        return None
    schemas = _schemas()
    if schemas is None:
        log.warning("mediapipe is not installed: TFLite artifacts carry no metadata (MediaPipe Tasks need it)")
        return None
    model_fb, meta_fb = schemas
    if not graph.baked:
        log.info("MediaPipe Tasks cannot apply per-channel normalization: use --bake-preprocessing for them")
    data = _with_metadata(model_fb, model_path.read_bytes(), metadata_buffer(meta_fb, graph))
    if graph.labels:
        zbuf = io.BytesIO()
        with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_STORED) as zf:
            # a fixed timestamp: writestr would stamp the current time and the same model would differ byte-wise
            zf.writestr(zipfile.ZipInfo(LABELS_FILE, date_time=(1980, 1, 1, 0, 0, 0)), "\n".join(graph.labels) + "\n")
        data += zbuf.getvalue()
    model_path.write_bytes(data)
    pre = graph.preprocessing
    return {"parser_version": PARSER_VERSION, "normalization": None if graph.baked else
            {"mean": [m / pre.scale for m in pre.mean], "std": [s / pre.scale for s in pre.std]},
            "labels": LABELS_FILE if graph.labels else None}
