"""Official / timm XCiT checkpoints -> Keras XCiT weights, through one explicit key map.

timm's layout is the canonical one (flat state dict, `pos_embed.`, class-attention
q/k/v split). Official checkpoints (weights under 'model', `pos_embeder.`, fused
class-attention `qkv`) are first renamed into it, the same way timm's
`checkpoint_filter_fn` does, so a single table maps names to Keras variables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xcit_edge.errors import UsageError
from xcit_edge.model.checkpoint import read_checkpoint
from xcit_edge.model.xcit import XCiT

log = logging.getLogger(__name__)

Transform = Callable[[np.ndarray], np.ndarray]


def _linear(w: np.ndarray) -> np.ndarray:
    return w.T  # torch Linear (out, in) -> Dense kernel (in, out)


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)


def _depthwise(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def _pointwise(w: np.ndarray) -> np.ndarray:
    return w[:, :, 0, 0].T  # 1x1 conv (O, I, 1, 1) -> Dense kernel (I, O)


def _same(w: np.ndarray) -> np.ndarray:
    return w


# Buffers timm/official checkpoints carry that have no counterpart in an inference graph.
IGNORED_SUFFIXES = ("num_batches_tracked",)


def _dense(prefix: str, layer) -> Iterator[tuple[str, object, Transform]]:
    yield f"{prefix}.weight", layer.kernel, _linear
    if layer.use_bias:
        yield f"{prefix}.bias", layer.bias, _same


def _norm(prefix: str, layer) -> Iterator[tuple[str, object, Transform]]:
    yield f"{prefix}.weight", layer.gamma, _same
    yield f"{prefix}.bias", layer.beta, _same


def _batch_norm(prefix: str, layer) -> Iterator[tuple[str, object, Transform]]:
    yield from _norm(prefix, layer)
    yield f"{prefix}.running_mean", layer.moving_mean, _same
    yield f"{prefix}.running_var", layer.moving_variance, _same


def key_map(model: XCiT) -> Iterator[tuple[str, object, Transform]]:
    """(timm key, Keras variable, torch->Keras transform) for every variable of `model`."""
    yield "cls_token", model.cls_token, _same
    for i, stage in enumerate(model.patch_embed.stages):
        p = f"patch_embed.proj.{2 * i}"
        yield f"{p}.0.weight", stage.conv.kernel, _conv
        yield from _batch_norm(f"{p}.1", stage.bn)
    proj = model.pos_embed.token_projection
    yield "pos_embed.token_projection.weight", proj.kernel, _pointwise
    yield "pos_embed.token_projection.bias", proj.bias, _same
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        for g in ("gamma1", "gamma2", "gamma3"):
            yield f"{p}.{g}", getattr(blk.gamma, g), _same
        for n in ("norm1", "norm2", "norm3"):
            yield from _norm(f"{p}.{n}", getattr(blk, n))
        yield f"{p}.attn.temperature", blk.attn.temperature, _same
        yield from _dense(f"{p}.attn.qkv", blk.attn.qkv)
        yield from _dense(f"{p}.attn.proj", blk.attn.proj)
        for c in ("conv1", "conv2"):
            conv = getattr(blk.local_mp, c)
            yield f"{p}.local_mp.{c}.weight", conv.kernel, _depthwise
            yield f"{p}.local_mp.{c}.bias", conv.bias, _same
        yield from _batch_norm(f"{p}.local_mp.bn", blk.local_mp.bn)
        yield from _dense(f"{p}.mlp.fc1", blk.mlp.fc1)
        yield from _dense(f"{p}.mlp.fc2", blk.mlp.fc2)
    for j, blk in enumerate(model.cls_attn_blocks):
        p = f"cls_attn_blocks.{j}"
        for g in ("gamma1", "gamma2"):
            yield f"{p}.{g}", getattr(blk.gamma, g), _same
        for n in ("norm1", "norm2"):
            yield from _norm(f"{p}.{n}", getattr(blk, n))
        for n in ("q", "k", "v", "proj"):
            yield from _dense(f"{p}.attn.{n}", getattr(blk.attn, n))
        yield from _dense(f"{p}.mlp.fc1", blk.mlp.fc1)
        yield from _dense(f"{p}.mlp.fc2", blk.mlp.fc2)
    yield from _norm("norm", model.norm)
    if model.head is not None:
        yield from _dense("head", model.head)


def official_to_timm(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename an official-layout state dict into timm's layout (no-op for timm's own)."""
    out: dict[str, np.ndarray] = {}
    for k, v in state.items():
        if k.startswith("pos_embeder."):
            k = "pos_embed." + k[len("pos_embeder.") :]
        if ".attn.qkv." in k and k.startswith("cls_attn_blocks."):
            kind = k.rsplit(".", 1)[1]  # weight | bias
            parts = v.reshape(3, -1, *v.shape[1:]) if kind == "weight" else v.reshape(3, -1)
            base = k[: -len(f"qkv.{kind}")]
            for name, part in zip("qkv", parts, strict=True):
                out[f"{base}{name}.{kind}"] = part
            continue
        out[k] = v
    return out


@dataclass
class ImportReport:
    """What a checkpoint import matched; problems are listed by key name."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unused_head: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 4) -> str:
        def names(items: list[str]) -> str:
            more = f", … (+{len(items) - limit})" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = []
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} mis-shaped ({names(self.mismatched)})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({names(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({names(self.unexpected)})")
        return "; ".join(parts)


def assign_state_dict(model: XCiT, state: dict[str, np.ndarray]) -> ImportReport:
    """Check every key and shape first, then assign; the model is untouched on failure."""
    state = official_to_timm(state)
    report = ImportReport()
    pending = []
    for key, var, transform in key_map(model):
        if key not in state:
            report.missing.append(key)
            continue
        value = transform(state.pop(key))
        if tuple(value.shape) != tuple(var.shape):
            report.mismatched.append(f"{key} {tuple(value.shape)} != {tuple(var.shape)}")
            continue
        pending.append((var, value))
    for key in list(state):
        if key.endswith(IGNORED_SUFFIXES):
            state.pop(key)
        elif model.head is None and key.startswith("head."):
            state.pop(key)  # a classifier checkpoint feeding a feature extractor
            report.unused_head = True
    report.unexpected = sorted(state)
    if report.ok:
        for var, value in pending:
            var.assign(value.astype(np.float32))
        report.loaded = len(pending)
    return report


def load_weights(model: XCiT, path: str | Path) -> ImportReport:
    """Load an official or timm checkpoint into `model`; one-line error naming the bad keys."""
    report = assign_state_dict(model, read_checkpoint(path))
    if not report.ok:
        raise UsageError(f"{path} does not fit {model.cfg.name}: {report.summary()}")
    log.info("loaded %d tensors from %s into %s", report.loaded, path, model.cfg.name)
    return report
