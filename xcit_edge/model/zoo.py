"""The XCiT architecture table: timm names, TF Hub names and their configs.

Following timm's model files, every architecture is one row of a table rather than a
function per variant; names are parsed against the table so an unknown name fails with
the list of known ones instead of a KeyError deep inside model code.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, replace

from xcit_edge.errors import UsageError, did_you_mean

# family -> (embed_dim, depth, num_heads, tokens_norm); from timm/models/xcit.py.
FAMILIES: dict[str, tuple[int, int, int, bool]] = {
    "nano_12": (128, 12, 4, False),
    "tiny_12": (192, 12, 4, True),
    "tiny_24": (192, 24, 4, True),
    "small_12": (384, 12, 8, True),
    "small_24": (384, 24, 8, True),
    "medium_24": (512, 24, 8, True),
    "large_24": (768, 24, 16, True),
}
PATCH_SIZES = (16, 8)
RESOLUTIONS = (224, 384)

# The 11 checkpoints of the rishit-dagli/xcit TF Hub collection (each also as `<name>_fe`).
HUB_SEED_NAMES = (
    "xcit_nano_12_p16_224",
    "xcit_tiny_12_p16_224",
    "xcit_tiny_24_p16_224",
    "xcit_small_12_p16_224",
    "xcit_small_24_p16_224",
    "xcit_medium_24_p16_224",
    "xcit_medium_24_p16_384",
    "xcit_large_24_p16_224",
    "xcit_large_24_p16_384",
    "xcit_large_24_p8_224",
    "xcit_large_24_p8_384",
)

# Preprocessing the official/timm weights expect (timm default cfg for xcit: crop_pct 1.0).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NAME_RE = re.compile(r"^xcit_([a-z]+_\d+)_p(\d+)_(\d+)(_fe)?(?:_dist)?$")


@dataclass(frozen=True)
class XCiTConfig:
    """Everything needed to build one XCiT; reduced configs for tests use the same type."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    tokens_norm: bool
    eta: float
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    cls_attn_layers: int = 2
    features: bool = False

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def output_dim(self) -> int:
        return self.embed_dim if self.features else self.num_classes

    def to_dict(self) -> dict:
        return asdict(self)


def timm_names() -> list[str]:
    """All 28 timm architecture names (7 families x 2 patch sizes x 2 resolutions)."""
    return [
        f"xcit_{fam}_p{p}_{r}" for fam in FAMILIES for p in PATCH_SIZES for r in RESOLUTIONS
    ]


def get_config(name: str, *, features: bool | None = None, img_size: int | None = None) -> XCiTConfig:
    """Config for a timm name (`xcit_nano_12_p16_224`) or TF Hub name (`..._fe`).

    `features=None` means "as the name says" (hub `_fe` names are feature extractors).
    `img_size` overrides the resolution: XCiT runs at any multiple of the patch size.
    """
    base = name.strip().split("/")[-1].split(".")[0].lower()
    if base.removesuffix("_fe") == FIXTURE.name:
        cfg = replace(FIXTURE, features=base.endswith("_fe") if features is None else features)
        return with_img_size(cfg, img_size) if img_size is not None else cfg
    m = _NAME_RE.match(base)
    if not m or m.group(1) not in FAMILIES or int(m.group(2)) not in PATCH_SIZES or int(m.group(3)) not in RESOLUTIONS:
        raise UsageError(
            f"unknown architecture {name!r}{did_you_mean(base.removesuffix('_fe'), timm_names())}; "
            f"known: {', '.join(timm_names())} "
            "(TF Hub feature-extractor names end in _fe)"
        )
    family, patch, res, fe = m.group(1), int(m.group(2)), int(m.group(3)), bool(m.group(4))
    dim, depth, heads, tokens_norm = FAMILIES[family]
    cfg = XCiTConfig(
        name=f"xcit_{family}_p{patch}_{res}",
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        patch_size=patch,
        img_size=res,
        tokens_norm=tokens_norm,
        eta=1.0 if depth == 12 else 1e-5,
        features=fe if features is None else features,
    )
    if img_size is not None:
        cfg = with_img_size(cfg, img_size)
    return cfg


def with_img_size(cfg: XCiTConfig, img_size: int) -> XCiTConfig:
    """Same weights, another resolution (the Fourier encoding is recomputed for the grid)."""
    if img_size <= 0 or img_size % cfg.patch_size:
        raise UsageError(f"image size {img_size} is not a positive multiple of patch size {cfg.patch_size}")
    return replace(cfg, img_size=img_size)


def reduced_config(**overrides) -> XCiTConfig:
    """A small XCiT with every structural feature of the real ones, for fast tests."""
    base = XCiTConfig(
        name="xcit_test_2_p16_64",
        embed_dim=32,
        depth=2,
        num_heads=2,
        patch_size=16,
        img_size=64,
        tokens_norm=True,
        eta=1.0,
        num_classes=10,
    )
    return replace(base, **overrides)


def param_count(cfg: XCiTConfig) -> int:
    """Parameters as timm counts them (BatchNorm buffers excluded), from the config alone.

    Lets `inspect` name the variant of a foreign SavedModel without building candidates.
    """
    d, h = cfg.embed_dim, cfg.num_heads
    widths = [3] + ([d // 8, d // 4, d // 2, d] if cfg.patch_size == 16 else [d // 4, d // 2, d])
    patch = sum(9 * a * b + 2 * b for a, b in itertools.pairwise(widths))  # conv + BN affine
    hidden = int(d * cfg.mlp_ratio)
    mlp = d * hidden + hidden + hidden * d + d
    xca_block = 3 * d + 6 * d + h + (3 * d * d + 3 * d) + (d * d + d) + 2 * (9 * d + d) + 2 * d + mlp
    ca_block = 2 * d + 4 * d + 4 * (d * d + d) + mlp
    head = 0 if cfg.features else d * cfg.num_classes + cfg.num_classes
    return patch + d + (64 * d + d) + cfg.depth * xca_block + cfg.cls_attn_layers * ca_block + 2 * d + head


# The trained test fixture (`scripts/train_fixture.py`, weights in tests/fixtures/): small enough
# to train on a CPU in minutes, real enough that accuracy-drop checks measure something.
FIXTURE = XCiTConfig(
    name="xcit_fixture_4_p8_64",
    embed_dim=64,
    depth=4,
    num_heads=4,
    patch_size=8,
    img_size=64,
    tokens_norm=False,
    eta=1.0,
    num_classes=10,
)
