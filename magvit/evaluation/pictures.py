"""Pictures a reader judges models by: reconstructions (originals above reconstructions,
clips of any kind in one image) and generated samples labelled by class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PAD_GREY = 128  # fills rows shorter than the widest (images beside videos)
SEPARATOR = 255  # the line between clips
LABEL_WIDTH = 128  # pixels of the class-name column of sample grids


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


def label_strip(text: str, height: int, width: int = LABEL_WIDTH) -> np.ndarray:
    """uint8 [height, width, 3]: `text` in black on white, at the left edge."""
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, height // 2 - 6), text, fill=(0, 0, 0))
    return np.asarray(strip)


def sample_grid(
    samples: np.ndarray, names: Sequence[str], frames: Sequence[int] = (0, 4, 8)
) -> np.ndarray:
    """One uint8 image of generated clips, uint8 [C, S, T, H, W, 3] (S samples of each of C
    classes): a row per class headed by its name, each sample drawn as the frames `frames`
    (those that exist) side by side, samples separated by white columns."""
    if len(samples) != len(names):
        raise ValueError(f"{len(samples)} classes of samples but {len(names)} names")
    shown = [f for f in frames if f < samples.shape[2]]
    rows = []
    for name, clips in zip(names, samples, strict=True):
        height = clips.shape[2]
        gap = np.full((height, 2, 3), SEPARATOR, dtype=np.uint8)
        row = [label_strip(name, height)]
        for clip in clips:
            row += [frame_row(clip[shown]), gap]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)
