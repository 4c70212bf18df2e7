"""Shared test helpers: seeded timm references, a private cache, quiet TensorFlow."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib

import numpy as np
import pytest

# torch (the test-only reference) must be loaded before TensorFlow: the other order
# segfaults in torchvision's import with TF 2.21 + torch 2.14 in one process.
with contextlib.suppress(ImportError):
    import timm  # noqa: F401
    import torch  # noqa: F401

from xcit_edge.tfimport import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own model cache, so nothing leaks between tests or into ~."""
    monkeypatch.setenv("XCIT_EDGE_CACHE", str(tmp_path_factory.mktemp("cache")))


def seeded_timm_model(name: str, seed: int = 0, **kwargs):
    """A timm XCiT with seeded weights and deliberately non-trivial BN stats, gammas and
    temperatures, so that every imported tensor changes the output."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif n.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        for n, p in model.named_parameters():
            if n.rsplit(".", 1)[-1] in {"gamma1", "gamma2", "gamma3", "temperature"}:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif n.endswith("bias") or ".bn." in n or ".1.weight" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
            elif n == "cls_token":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def timm_forward(model, images_nhwc: np.ndarray, pre_logits: bool = False) -> np.ndarray:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
        feats = model.forward_features(x)
        return model.forward_head(feats, pre_logits=pre_logits).numpy()


def rel_max_err(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|: the fidelity metric the project reports."""
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Normalized-image-like inputs (standard normal, NHWC)."""
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)
