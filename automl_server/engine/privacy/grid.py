"""The audit's picture: originals beside their rebuilds, one PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from automl_server.engine.privacy.audit import Row

CELL_PX = 56  # each image drawn at least this big (nearest neighbour: 8x8 digits stay crisp)
GAP_PX = 4


def _tile(pixels: np.ndarray, size: int) -> Image.Image:
    """A (C, H, W) image in [0, 1] as an RGB tile of ``size`` pixels."""
    array = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array[:3]
    return Image.fromarray(array.transpose(1, 2, 0)).resize((size, size), Image.Resampling.NEAREST)


def save_grid(rows: list[Row], path: Path, columns: int) -> Path:
    """First line: the originals of the first row; then one line of rebuilds per row."""
    lines = [rows[0].originals[:columns]] + [row.rebuilds[:columns] for row in rows if row.rebuilds]
    width = max((len(line) for line in lines), default=1)
    canvas = Image.new("RGB", (width * (CELL_PX + GAP_PX) + GAP_PX, len(lines) * (CELL_PX + GAP_PX) + GAP_PX),
                       (255, 255, 255))
    for r, line in enumerate(lines):
        for c, pixels in enumerate(line):
            canvas.paste(_tile(pixels, CELL_PX), (GAP_PX + c * (CELL_PX + GAP_PX), GAP_PX + r * (CELL_PX + GAP_PX)))
    canvas.save(path, format="PNG")
    return path
