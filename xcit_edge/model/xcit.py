"""XCiT (Cross-Covariance Image Transformer) as Keras 3 layers, faithful to the official code.

One forward path, mirroring timm's `timm/models/xcit.py` module for module, so the weight
map in `weights.py` is a plain walk over both trees. Layout is NHWC (TensorFlow's native
one); where the official code reshapes to (B, C, H, W) we reshape to (B, H, W, C) instead,
which is the same arithmetic. Deviations from a naive port that matter for fidelity:

* PyTorch's `padding=1` on stride-2 convs is explicit `ZeroPadding2D(1)` + 'valid'
  (TF 'same' pads asymmetrically for even inputs and shifts every patch by one pixel).
* LayerNorm eps is 1e-6 (Keras' default 1e-3 is wrong here); BatchNorm eps 1e-5.
* GELU is the exact erf form.
* XCA normalizes with `x / max(||x||, 1e-12)` exactly like `F.normalize`, and not with
  `tf.math.l2_normalize` (which clamps the *squared* norm and which OpenVINO's CPU plugin
  mis-executes: docs/RUNTIME_NOTES.md).
* The Fourier positional encoding depends only on the token grid: it is a constant.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from xcit_edge.model.zoo import XCiTConfig

LN_EPS = 1e-6
BN_EPS = 1e-5
NORM_EPS = 1e-12  # F.normalize's clamp on the L2 norm


def gelu(x):
    """Exact (erf) GELU, as torch.nn.GELU()."""
    return keras.activations.gelu(x, approximate=False)


def _dense(units: int, name: str, use_bias: bool = True) -> layers.Dense:
    """Linear layer initialised like timm (trunc-normal std 0.02, zero bias)."""
    return layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name=name,
    )


def _layer_norm(name: str) -> layers.LayerNormalization:
    return layers.LayerNormalization(epsilon=LN_EPS, name=name)


def fourier_features(grid_h: int, grid_w: int, hidden_dim: int = 32, temperature: float = 1e4) -> np.ndarray:
    """The (H*W, 2*hidden_dim) Fourier features of timm's PositionalEncodingFourier.

    Row-major tokens; channels are [y features, x features], each interleaving sin on
    even and cos on odd channels. Computed in float64, rounded once to float32.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = np.arange(1, grid_h + 1, dtype=np.float64)[:, None].repeat(grid_w, 1)
    x = np.arange(1, grid_w + 1, dtype=np.float64)[None, :].repeat(grid_h, 0)
    y = y / (grid_h + eps) * scale
    x = x / (grid_w + eps) * scale
    dim_t = np.arange(hidden_dim, dtype=np.float64)
    dim_t = temperature ** (2 * (dim_t // 2) / hidden_dim)

    def encode(pos: np.ndarray) -> np.ndarray:
        p = pos[..., None] / dim_t
        out = np.empty_like(p)
        out[..., 0::2] = np.sin(p[..., 0::2])
        out[..., 1::2] = np.cos(p[..., 1::2])
        return out

    feats = np.concatenate([encode(y), encode(x)], axis=-1)
    return feats.reshape(grid_h * grid_w, 2 * hidden_dim).astype(np.float32)


class ConvBN(layers.Layer):
    """3x3 stride-2 conv (no bias, PyTorch padding 1) + BatchNorm: timm's `conv3x3`."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = layers.ZeroPadding2D(1)
        self.conv = layers.Conv2D(filters, 3, strides=2, padding="valid", use_bias=False, name="conv")
        self.bn = layers.BatchNormalization(epsilon=BN_EPS, name="bn")

    def call(self, x, training=False):
        return self.bn(self.conv(self.pad(x)), training=training)


class ConvPatchEmbed(layers.Layer):
    """Convolutional patch embedding: 4 (p16) or 3 (p8) ConvBN stages with GELU between."""

    def __init__(self, embed_dim: int, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        if patch_size == 16:
            widths = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        elif patch_size == 8:
            widths = [embed_dim // 4, embed_dim // 2, embed_dim]
        else:
            raise ValueError(f"XCiT patch size must be 8 or 16, not {patch_size}")
        self.stages = [ConvBN(w, name=f"proj.{2 * i}") for i, w in enumerate(widths)]

    def call(self, x, training=False):
        for i, stage in enumerate(self.stages):
            if i:
                x = gelu(x)
            x = stage(x, training=training)
        return x  # (B, Hp, Wp, D)


class PositionalEncodingFourier(layers.Layer):
    """Constant Fourier features of the grid, projected by a learned 1x1 conv (a Dense)."""

    def __init__(self, embed_dim: int, grid: int, **kwargs):
        super().__init__(**kwargs)
        self.features = fourier_features(grid, grid)
        self.token_projection = _dense(embed_dim, "token_projection")

    def call(self, x):
        return x + self.token_projection(ops.convert_to_tensor(self.features))[None]


class XCA(layers.Layer):
    """Cross-covariance attention over the d x d channel Gram matrix of each head."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.num_tokens = dim, num_heads, num_tokens
        self.qkv = _dense(3 * dim, "qkv")
        self.proj = _dense(dim, "proj")

    def build(self, input_shape):
        self.temperature = self.add_weight(
            name="temperature", shape=(self.num_heads, 1, 1), initializer="ones"
        )
        super().build(input_shape)

    def call(self, x):
        h, d, n = self.num_heads, self.dim // self.num_heads, self.num_tokens
        qkv = ops.reshape(self.qkv(x), (-1, n, 3, h, d))
        qkv = ops.transpose(qkv, (2, 0, 3, 4, 1))  # (3, B, h, d, N)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q / ops.maximum(ops.sqrt(ops.sum(q * q, axis=-1, keepdims=True)), NORM_EPS)
        k = k / ops.maximum(ops.sqrt(ops.sum(k * k, axis=-1, keepdims=True)), NORM_EPS)
        attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * self.temperature
        attn = ops.softmax(attn, axis=-1)
        out = ops.matmul(attn, v)  # (B, h, d, N)
        out = ops.reshape(ops.transpose(out, (0, 3, 1, 2)), (-1, n, self.dim))
        return self.proj(out)


class LPI(layers.Layer):
    """Local patch interaction: depthwise 3x3 -> GELU -> BatchNorm -> depthwise 3x3."""

    def __init__(self, dim: int, grid: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.grid = dim, grid
        self.conv1 = layers.DepthwiseConv2D(3, padding="same", name="conv1")
        self.bn = layers.BatchNormalization(epsilon=BN_EPS, name="bn")
        self.conv2 = layers.DepthwiseConv2D(3, padding="same", name="conv2")

    def call(self, x, training=False):
        x = ops.reshape(x, (-1, self.grid, self.grid, self.dim))
        x = self.conv2(self.bn(gelu(self.conv1(x)), training=training))
        return ops.reshape(x, (-1, self.grid * self.grid, self.dim))


class Mlp(layers.Layer):
    def __init__(self, dim: int, hidden: int, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = _dense(hidden, "fc1")
        self.fc2 = _dense(dim, "fc2")

    def call(self, x):
        return self.fc2(gelu(self.fc1(x)))


class LayerScale(layers.Layer):
    """The per-channel `gammaN` parameters of a block, as one layer holding them all."""

    def __init__(self, dim: int, names: tuple[str, ...], eta: float, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.names, self.eta = dim, names, eta

    def build(self, input_shape=None):
        for n in self.names:
            init = keras.initializers.Constant(self.eta)
            setattr(self, n, self.add_weight(name=n, shape=(self.dim,), initializer=init))
        super().build(input_shape)


class XCABlock(layers.Layer):
    """x += g1*XCA(norm1 x); x += g3*LPI(norm3 x); x += g2*MLP(norm2 x) (official order)."""

    def __init__(self, cfg: XCiTConfig, **kwargs):
        super().__init__(**kwargs)
        d = cfg.embed_dim
        self.norm1 = _layer_norm("norm1")
        self.attn = XCA(d, cfg.num_heads, cfg.num_tokens, name="attn")
        self.norm3 = _layer_norm("norm3")
        self.local_mp = LPI(d, cfg.grid, name="local_mp")
        self.norm2 = _layer_norm("norm2")
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio), name="mlp")
        self.gamma = LayerScale(d, ("gamma1", "gamma3", "gamma2"), cfg.eta, name="gamma")

    def build(self, input_shape):
        self.gamma.build()
        super().build(input_shape)

    def call(self, x, training=False):
        g = self.gamma
        x = x + g.gamma1 * self.attn(self.norm1(x))
        x = x + g.gamma3 * self.local_mp(self.norm3(x), training=training)
        return x + g.gamma2 * self.mlp(self.norm2(x))


class ClassAttention(layers.Layer):
    """CaiT class attention: only the class token queries (scale d^-0.5, softmax over N+1)."""

    def __init__(self, dim: int, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads = dim, num_heads
        self.q = _dense(dim, "q")
        self.k = _dense(dim, "k")
        self.v = _dense(dim, "v")
        self.proj = _dense(dim, "proj")

    def call(self, x):
        h, d = self.num_heads, self.dim // self.num_heads
        q = ops.reshape(self.q(x[:, 0:1]), (-1, 1, h, d))  # (B, 1, h, d)
        k = ops.reshape(self.k(x), (-1, ops.shape(x)[1], h, d))  # (B, T, h, d)
        v = ops.reshape(self.v(x), (-1, ops.shape(x)[1], h, d))
        attn = ops.sum(q * k, axis=-1) * (d**-0.5)  # (B, T, h)
        attn = ops.softmax(attn, axis=1)
        out = ops.sum(attn[..., None] * v, axis=1)  # (B, h, d)
        return self.proj(ops.reshape(out, (-1, 1, self.dim)))


class ClassAttentionBlock(layers.Layer):
    """timm's ClassAttentionBlock, quirks included (patch tokens get gamma1*norm1(x))."""

    def __init__(self, cfg: XCiTConfig, **kwargs):
        super().__init__(**kwargs)
        d = cfg.embed_dim
        self.tokens_norm = cfg.tokens_norm
        self.norm1 = _layer_norm("norm1")
        self.attn = ClassAttention(d, cfg.num_heads, name="attn")
        self.norm2 = _layer_norm("norm2")
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio), name="mlp")
        self.gamma = LayerScale(d, ("gamma1", "gamma2"), cfg.eta, name="gamma")

    def build(self, input_shape):
        self.gamma.build()
        super().build(input_shape)

    def call(self, x):
        g = self.gamma
        x_norm1 = self.norm1(x)
        x = x + g.gamma1 * ops.concatenate([self.attn(x_norm1), x_norm1[:, 1:]], axis=1)
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = ops.concatenate([self.norm2(x[:, 0:1]), x[:, 1:]], axis=1)
        cls = g.gamma2 * self.mlp(x[:, 0:1])
        return x + ops.concatenate([cls, x[:, 1:]], axis=1)


class XCiT(keras.Model):
    """XCiT classifier (logits) or feature extractor (normed class token, `cfg.features`)."""

    def __init__(self, cfg: XCiTConfig, **kwargs):
        super().__init__(name=cfg.name, **kwargs)
        self.cfg = cfg
        self.patch_embed = ConvPatchEmbed(cfg.embed_dim, cfg.patch_size, name="patch_embed")
        self.pos_embed = PositionalEncodingFourier(cfg.embed_dim, cfg.grid, name="pos_embed")
        self.blocks = [XCABlock(cfg, name=f"blocks.{i}") for i in range(cfg.depth)]
        self.cls_attn_blocks = [
            ClassAttentionBlock(cfg, name=f"cls_attn_blocks.{i}") for i in range(cfg.cls_attn_layers)
        ]
        self.norm = _layer_norm("norm")
        self.head = None if cfg.features else _dense(cfg.num_classes, "head")

    def build(self, input_shape):
        self.cls_token = self.add_weight(name="cls_token", shape=(1, 1, self.cfg.embed_dim), initializer="zeros")
        super().build(input_shape)

    def call(self, images, training=False):
        cfg = self.cfg
        x = self.patch_embed(images, training=training)
        x = ops.reshape(x, (-1, cfg.num_tokens, cfg.embed_dim))
        x = self.pos_embed(x)
        for blk in self.blocks:
            x = blk(x, training=training)
        cls = ops.zeros_like(x[:, :1]) + self.cls_token  # broadcast to the batch
        x = ops.concatenate([cls, x], axis=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        x = self.norm(x)[:, 0]
        return x if self.head is None else self.head(x)


def build_model(cfg: XCiTConfig, seed: int | None = 0) -> XCiT:
    """Build (and create the variables of) an XCiT; same seed, same initial weights."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    model = XCiT(cfg)
    model(keras.Input((cfg.img_size, cfg.img_size, 3), batch_size=1))  # symbolic: builds, computes nothing
    return model


def count_params(model: XCiT) -> int:
    """Trainable parameters, counted as timm counts `model.parameters()` (no BN buffers)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
