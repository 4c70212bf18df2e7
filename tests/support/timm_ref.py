"""timm as the independent reference (test extra: torch, timm); never needed at run time.

Seeded timm XCiTs stand in for the official checkpoints, which cannot be downloaded here.
Their BatchNorm statistics, LayerScale gammas and temperatures are randomized on purpose:
left at their init values (0/1), a broken import of those tensors would go unnoticed.
"""

from __future__ import annotations

import numpy as np

from xcit_edge.metrics import rel_max_err  # noqa: F401 - re-exported for tests and benchmarks


def seeded_timm_model(name: str, seed: int = 0, **kwargs):
    """A timm XCiT in eval mode whose every tensor is seeded and non-trivial."""
    import timm
    import torch

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
    """timm's logits (or pre-logits features) for NHWC inputs."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()
        return model.forward_head(model.forward_features(x), pre_logits=pre_logits).numpy()


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Normalized-image-like inputs (standard normal, NHWC), seeded."""
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def sabotaged(weights: dict[str, np.ndarray], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Two broken copies of a timm state dict that `validate` must catch: "noisy" (Gaussian noise of 5 % of
    each weight matrix's std) and "swapped" (classes 0 and 1 exchanged in the head)."""
    rng = np.random.default_rng(seed)
    noisy = {k: v + rng.normal(0, 0.05 * v.std(), v.shape).astype(v.dtype) if v.ndim >= 2 else v
             for k, v in weights.items()}
    swapped = dict(weights)
    for k in ("head.weight", "head.bias"):
        swapped[k] = weights[k][[1, 0, *range(2, len(weights[k]))]]
    return {"noisy": noisy, "swapped": swapped}
