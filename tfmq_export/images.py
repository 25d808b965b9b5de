"""Image grids: how samples are shown to people (PNG, written atomically)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tfmq_export.errors import TfmqError


def to_grid(images: np.ndarray, columns: int | None = None, scale: int = 2) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 grid [rows*H, cols*W(, C)] with 1-pixel gaps, upscaled."""
    if images.ndim != 4:
        raise TfmqError(f"expected images [N, C, H, W], got shape {images.shape}")
    n, c, h, w = images.shape
    if c not in (1, 3):
        images = images[:, :1] if c < 3 else images[:, :3]  # latents: show the first channel(s)
        c = images.shape[1]
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((c, rows * (h + 1) + 1, cols * (w + 1) + 1), dtype=np.float32) - 1.0
    for i in range(n):
        r, k = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = images[i]
    pixels = ((np.clip(grid, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    return pixels[0] if c == 1 else pixels.transpose(1, 2, 0)


def save_grid(images: np.ndarray, path: Path, columns: int | None = None) -> None:
    """Write a PNG grid via a temp file + rename."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(to_grid(images, columns)).save(tmp, format="PNG")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
