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
