"""Labelled images the project can generate anywhere: the trained fixture's data and the
shipped calibration sample. No download, same pixels for the same seed on every machine.

Ten classes, each a shape or texture drawn with random colours, position, scale and noise,
so a small XCiT has to learn spatial structure (not just colour) to tell them apart.
"""

from __future__ import annotations

import numpy as np

CLASSES = (
    "circle", "square", "triangle", "cross", "ring",
    "horizontal_stripes", "vertical_stripes", "checkerboard", "diagonal_stripes", "dots",
)


def _mask(cls: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean foreground of class `cls` on a unit grid (coordinates in [0, 1))."""
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    r = rng.uniform(0.15, 0.3)
    period = rng.uniform(0.12, 0.25)
    phase = rng.uniform(0, period)
    dy, dx = yy - cy, xx - cx
    if cls == 0:
        return dy**2 + dx**2 < r**2
    if cls == 1:
        return (np.abs(dy) < r) & (np.abs(dx) < r)
    if cls == 2:
        return (dy < r) & (dy > -r) & (np.abs(dx) < (dy + r) / 2)
    if cls == 3:
        w = r / 3
        return ((np.abs(dy) < w) & (np.abs(dx) < r)) | ((np.abs(dx) < w) & (np.abs(dy) < r))
    if cls == 4:
        d = np.sqrt(dy**2 + dx**2)
        return (d < r) & (d > r * 0.6)
    if cls == 5:
        return ((yy + phase) % period) < period / 2
    if cls == 6:
        return ((xx + phase) % period) < period / 2
    if cls == 7:
        return (((yy + phase) // period + (xx + phase) // period) % 2) == 0
    if cls == 8:
        return ((yy + xx + phase) % period) < period / 2
    return (((yy + phase) % period - period / 2) ** 2 + ((xx + phase) % period - period / 2) ** 2) < (period / 4) ** 2


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours at least 0.35 apart (mean over channels)."""
    while True:
        fg, bg = rng.uniform(0, 1, size=(2, 3))
        if np.abs(fg - bg).mean() > 0.35:
            return fg, bg


def make_images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 RGB images (n, size, size, 3) and their int64 labels, classes balanced round-robin."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    for i, cls in enumerate(labels):
        fg, bg = _colours(rng)
        m = _mask(int(cls), yy, xx, rng)[..., None]
        img = np.where(m, fg, bg) + rng.normal(0, 0.06, size=(size, size, 3))
        images[i] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, labels


def write_folder(root, per_class: int, size: int, seed: int) -> int:
    """Write an ImageNet-style folder `root/<class>/<i>.jpg`; returns the number of images."""
    from pathlib import Path

    from PIL import Image

    images, labels = make_images(per_class * len(CLASSES), size, seed)
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        d = Path(root) / CLASSES[lab]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:04d}.jpg", quality=92)
    return len(images)
