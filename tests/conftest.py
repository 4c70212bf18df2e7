"""Shared test helpers: seeded timm references, a private cache, quiet TensorFlow."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib

import pytest

# torch (the test-only reference) must be loaded before TensorFlow: the other order
# segfaults in torchvision's import with TF 2.21 + torch 2.14 in one process.
with contextlib.suppress(ImportError):
    import timm  # noqa: F401
    import torch  # noqa: F401

from xcit_edge.tfimport import import_tensorflow_quietly

import_tensorflow_quietly()

from xcit_edge.timm_ref import images, rel_max_err, seeded_timm_model, timm_forward  # noqa: E402, F401


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own model cache, so nothing leaks between tests or into ~."""
    monkeypatch.setenv("XCIT_EDGE_CACHE", str(tmp_path_factory.mktemp("cache")))
