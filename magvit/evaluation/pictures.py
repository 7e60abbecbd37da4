"""Pictures of reconstructions: originals above reconstructions, clips of any kind in one
image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD_GREY = 128  # fills rows shorter than the widest (images beside videos)
SEPARATOR = 255  # the line between clips


def frame_row(clip: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [H, T * W, 3]: the frames side by side."""
    return np.concatenate(list(clip), axis=1)


def padded(row: np.ndarray, width: int) -> np.ndarray:
    """`row` [H, W, 3] widened to `width` with grey on the right."""
    fill = np.full((row.shape[0], width - row.shape[1], 3), PAD_GREY, dtype=np.uint8)
    return np.concatenate([row, fill], axis=1)


def reconstruction_grid(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], separator: int = 2
) -> np.ndarray:
    """One uint8 image [H', W', 3] of (original, reconstruction) clips [T, H, W, 3]: per clip
    a row of original frames above a row of reconstructed frames, rows padded with grey to
    the widest, `separator` white pixel rows between clips."""
    if not pairs:
        raise ValueError("no clips to draw")
    rows = [(frame_row(original), frame_row(recon)) for original, recon in pairs]
    width = max(row.shape[1] for pair in rows for row in pair)
    line = np.full((separator, width, 3), SEPARATOR, dtype=np.uint8)
    blocks = []
    for i, (original, recon) in enumerate(rows):
        if i:
            blocks.append(line)
        blocks += [padded(original, width), padded(recon, width)]
    return np.concatenate(blocks, axis=0)
