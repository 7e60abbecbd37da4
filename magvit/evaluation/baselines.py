"""Trivial predictors of held-out clips: the scale on which a tokenizer's PSNR reads.

Each predictor maps uint8 clips [N, T, H, W, 3] to uint8 clips of the same shape in which
groups of pixels are replaced by their mean colour. `token_footprint_mean` is one flat,
exact colour per token footprint: a reference, not a bound (a token holds `bits` bits, a
colour 24).
"""

from __future__ import annotations

import numpy as np

from models.recon_metrics import psnr


def _segment_means(x: np.ndarray, axis: int, starts: np.ndarray) -> np.ndarray:
    """Each run of `x` along `axis` that begins at one of `starts` replaced by its mean."""
    lengths = np.diff(np.append(starts, x.shape[axis]))
    shape = [1] * x.ndim
    shape[axis] = len(lengths)
    means = np.add.reduceat(x, starts, axis=axis) / lengths.reshape(shape)
    return np.repeat(means, lengths, axis=axis)


def _as_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _spatial_block_means(x: np.ndarray, block: int) -> np.ndarray:
    """float [N, T, H, W, 3]: block x block means per frame (smaller blocks at ragged edges)."""
    for axis in (2, 3):
        x = _segment_means(x, axis, np.arange(0, x.shape[axis], block))
    return x


def clip_mean_colour(clips: np.ndarray) -> np.ndarray:
    """Every pixel of a clip replaced by the clip's mean colour (all frames and pixels)."""
    means = clips.mean(axis=(1, 2, 3), dtype=np.float64, keepdims=True)
    return _as_uint8(np.broadcast_to(means, clips.shape))


def frame_mean_colour(clips: np.ndarray) -> np.ndarray:
    """Every pixel of a frame replaced by that frame's mean colour."""
    means = clips.mean(axis=(2, 3), dtype=np.float64, keepdims=True)
    return _as_uint8(np.broadcast_to(means, clips.shape))


def block_means(clips: np.ndarray, block: int) -> np.ndarray:
    """Every block x block square of a frame replaced by its mean colour."""
    return _as_uint8(_spatial_block_means(clips.astype(np.float64), block))


def causal_frame_starts(frames: int, temporal_factor: int) -> np.ndarray:
    """First pixel frame of each latent frame: 0 alone, then groups of `temporal_factor`."""
    return np.concatenate([[0], np.arange(1, frames, temporal_factor)]).astype(int)


def token_footprint_mean(
    clips: np.ndarray, spatial_factor: int, temporal_factor: int
) -> np.ndarray:
    """Every token's footprint replaced by its mean colour: spatial_factor x spatial_factor
    pixels times the pixel frames of its latent frame (frame 0 alone, then groups of
    temporal_factor, as the causal tokenizer groups them)."""
    x = _spatial_block_means(clips.astype(np.float64), spatial_factor)
    x = _segment_means(x, 1, causal_frame_starts(clips.shape[1], temporal_factor))
    return _as_uint8(x)


def colour_saturation(clips: np.ndarray) -> float:
    """Mean over pixels of (max channel - min channel), in 0..255 units."""
    spread = clips.max(axis=-1).astype(np.int16) - clips.min(axis=-1)
    return float(spread.mean())


def baseline_psnrs(
    clips: np.ndarray, spatial_factor: int, temporal_factor: int
) -> dict[str, float]:
    """PSNR (dB) of each trivial predictor of `clips`."""
    predictions = {
        "clip_mean_colour": clip_mean_colour(clips),
        "frame_mean_colour": frame_mean_colour(clips),
        "token_footprint_mean": token_footprint_mean(clips, spatial_factor, temporal_factor),
        "block_mean_8x8": block_means(clips, 8),
        "block_mean_4x4": block_means(clips, 4),
    }
    return {name: psnr(clips, predicted) for name, predicted in predictions.items()}
