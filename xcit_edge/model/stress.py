"""A quantization stress test made from trained weights: the same function, activations that are hard to quantize.

Trained ViTs have post-LayerNorm activations whose channels differ in range by 10-100x (RepQ-ViT,
SmoothQuant); a small model trained for a few epochs does not (the trained fixture's post-LN
channel ranges differ by at most about 2x), so it flatters per-tensor activation quantization.
`stress_weights` reproduces the trained-ViT situation without changing what the model computes:
for chosen channels c of a LayerNorm, gamma_c and beta_c are multiplied by s (10-50x) and the
input column c of every linear layer reading that LayerNorm is divided by s. The LayerNorm's
output channel c is s times larger, the next layer's product unchanged, so float32 outputs are
the same up to rounding.

Which LayerNorms (timm's XCiT, the weight keys of `model/weights.py`):
* `blocks.i.norm1` -> `attn.qkv`, `norm2` -> `mlp.fc1`, `norm3` -> `local_mp.conv1` (depthwise:
  channel c's kernel is divided, its bias kept);
* the final `norm` -> `head`;
* not the class-attention blocks: their `norm1` output of the patch tokens is added to the residual
  stream and their `norm2` replaces the class token, so scaling them would change the function.
"""

from __future__ import annotations

import re

import numpy as np

# LayerNorm -> the weights reading its output, for the patch-token blocks (timm key suffixes)
_BLOCK_READERS = {"norm1": ("attn.qkv.weight",), "norm2": ("mlp.fc1.weight",), "norm3": ("local_mp.conv1.weight",)}


def _readers(state: dict) -> dict[str, tuple[str, ...]]:
    """Every LayerNorm prefix to scale, with the weight keys that read its output."""
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    out = {f"blocks.{b}.{norm}": tuple(f"blocks.{b}.{r}" for r in readers)
           for b in blocks for norm, readers in _BLOCK_READERS.items()}
    if "head.weight" in state:  # a feature extractor has no head: its final norm is the output itself
        out["norm"] = ("head.weight",)
    return out


def stress_weights(state: dict[str, np.ndarray], seed: int = 0, channels: int = 4, low: float = 10.0,
                   high: float = 50.0) -> dict[str, np.ndarray]:
    """A copy of a timm XCiT state dict with `channels` channels of every scaled LayerNorm (see the module
    docstring) multiplied by a factor in [low, high] and the matching input columns divided by it."""
    rng = np.random.default_rng(seed)
    out = {k: np.array(v, copy=True) for k, v in state.items()}
    for norm, readers in _readers(out).items():
        width = out[f"{norm}.weight"].shape[0]
        chosen = rng.choice(width, size=min(channels, width), replace=False)
        factors = rng.uniform(low, high, size=len(chosen)).astype(np.float32)
        for c, s in zip(chosen, factors, strict=True):
            out[f"{norm}.weight"][c] *= s
            out[f"{norm}.bias"][c] *= s
            for key in readers:
                w = out[key]
                if w.ndim == 2:  # Linear (out, in): input column c
                    w[:, c] /= s
                else:  # depthwise Conv2d (channels, 1, kh, kw): channel c's kernel
                    w[c] /= s
    return out
