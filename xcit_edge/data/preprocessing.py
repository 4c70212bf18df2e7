"""The preprocessing a model's weights expect, recorded once and read by every command.

`build` stores it in the SavedModel (asset `xcit_edge.json`); for foreign models the
timm default for XCiT is assumed and flags can override it. Keeping it as data avoids
the classic silent bug of edge ports: right model, wrong normalization.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from xcit_edge.model.zoo import IMAGENET_MEAN, IMAGENET_STD

# What each axis of a model's image input holds. NWHC is the TF Hub collection's recipe: an NHWC-looking
# input that the model reads transposed (`model(torch.transpose(x, 1, 3))`), so rows are image columns.
LAYOUTS = ("NHWC", "NCHW", "NWHC", "NCWH")


def layout_perm(layout: str) -> list[int]:
    """The transpose that takes an NHWC batch to `layout`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown input layout {layout!r} (known: {', '.join(LAYOUTS)})")
    return ["NHWC".index(axis) for axis in layout]


def to_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """An NHWC image batch in the axis order `layout` names."""
    perm = layout_perm(layout)
    return images if perm == [0, 1, 2, 3] else np.ascontiguousarray(images.transpose(perm))


@dataclass(frozen=True)
class Preprocessing:
    """Resize to `size` (H, W), scale pixels by `scale`, then (x - mean) / std per channel."""

    size: tuple[int, int]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layout: str = "NHWC"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """From recorded data (a SavedModel asset, a manifest: untrusted); ValueError/TypeError/KeyError if
        it does not describe a usable preprocessing."""
        pre = cls(
            size=tuple(int(v) for v in d["size"]),
            interpolation=str(d.get("interpolation", "bicubic")),
            crop_pct=float(d.get("crop_pct", 1.0)),
            scale=float(d.get("scale", 1.0 / 255.0)),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
            layout=str(d.get("layout", "NHWC")),
        )
        if len(pre.size) != 2 or min(pre.size) < 1 or len(pre.mean) != 3 or len(pre.std) != 3 or 0.0 in pre.std:
            raise ValueError("needs a 2-value size, 3 means and 3 non-zero stds")
        layout_perm(pre.layout)
        if not 0.0 < pre.crop_pct <= 1.0:
            raise ValueError(f"crop_pct {pre.crop_pct} outside (0, 1]")
        return pre

    def describe(self) -> str:
        h, w = self.size
        return (
            f"{self.interpolation} resize to {h}x{w} (crop {self.crop_pct:g}), x*{self.scale:.6g}, "
            f"mean {list(self.mean)}, std {list(self.std)}, {self.layout}"
        )


def timm_default(img_size: int) -> Preprocessing:
    """What timm's default cfg for XCiT says (bicubic, crop_pct 1.0, ImageNet mean/std)."""
    return Preprocessing(size=(img_size, img_size))
