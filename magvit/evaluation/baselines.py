"""Trivial predictors of held-out clips and tokens: the scale on which a tokenizer's PSNR and
a masked model's token accuracy read.

Each pixel predictor maps uint8 clips [N, T, H, W, 3] to uint8 clips of the same shape in
which groups of pixels are replaced by their mean colour. `token_footprint_mean` is one flat,
exact colour per token footprint: a reference, not a bound (a token holds `bits` bits, a
colour 24). The token baselines copy tokens from neighbouring latent frames.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

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


def copy_neighbour_tokens(tokens: torch.Tensor, mask: torch.Tensor, grid) -> torch.Tensor:
    """The masked-token baseline: each masked token guessed as the token at the same (h, w) in
    the nearest latent frame where that position is visible (the earlier frame on a tie), -1
    where no frame shows it. tokens int64 [B, N] and mask bool [B, N] in raster order
    (t, h, w) of `grid`."""
    t, h, w = grid
    frames = rearrange(tokens, "b (t h w) -> b t h w", t=t, h=h, w=w)
    hidden = rearrange(mask, "b (t h w) -> b t h w", t=t, h=h, w=w)
    guess = torch.full_like(frames, -1)
    for target in range(t):
        for source in sorted(range(t), key=lambda s: (abs(s - target), s)):
            if source == target:
                continue
            fill = (guess[:, target] < 0) & ~hidden[:, source]
            guess[:, target] = torch.where(fill, frames[:, source], guess[:, target])
    return torch.where(mask, rearrange(guess, "b t h w -> b (t h w)"), tokens)


def copy_last_condition_frame(tokens: torch.Tensor, condition_frames: int, grid) -> torch.Tensor:
    """The frame-prediction baseline: the last condition latent frame repeated over the rest.
    tokens int64 [B, N] in raster order (t, h, w) of `grid`."""
    t, h, w = grid
    frames = rearrange(tokens, "b (t h w) -> b t h w", t=t, h=h, w=w).clone()
    frames[:, condition_frames:] = frames[:, condition_frames - 1 : condition_frames]
    return rearrange(frames, "b t h w -> b (t h w)")
