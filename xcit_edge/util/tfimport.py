"""Import TensorFlow without its C++ start-up banner on stderr.

TF 2.21 prints absl INFO lines (oneDNN notice, CPU feature guard) while its shared
libraries load, whatever TF_CPP_MIN_LOG_LEVEL says. The CLI promises one clear line
on failure, so the banner is swallowed by pointing fd 2 at /dev/null for the import.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly():
    """Import and return `tensorflow` (and keras), with the load-time banner silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401 - loads the same libraries; keep it inside the silence
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def exact_tensorflow():
    """Import TensorFlow and turn off grappler's remapper, for every run that serves as a reference.

    The remapper fuses op patterns into CPU kernels (_FusedMatMul, _FusedConv2D, ...); on a frozen
    onnx2tf export of the trained fixture (96 px) it changed the result (cosine 0.986 against timm,
    while the same graph with the remapper off, the unfrozen SavedModel, ONNX Runtime and OpenVINO all
    agree with timm to 1e-12; measured with TF 2.21). A reference must be exact, not fast. The setting
    is process-wide and only affects TensorFlow's own execution (converters do not use it).
    """
    tf = import_tensorflow_quietly()
    tf.config.optimizer.set_experimental_options({"remapping": False})
    return tf
