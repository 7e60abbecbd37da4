"""Clip shard rows -> model inputs: uint8 arrays and [-1, 1] tensors, on Ray workers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from models.tokenizer import pixels_to_unit, unit_to_pixels


def augment(
    frames: np.ndarray, rng: np.random.Generator, max_zoom: float = 1.0, colour_orders: bool = True
) -> np.ndarray:
    """A random horizontal flip and (with `colour_orders`) colour-channel order per clip of
    uint8 [B, T, H, W, 3]: the same shapes, textures and motions in other colours and
    directions, so a small corpus is not learnt by heart. With `max_zoom` > 1 each clip is
    also magnified by a random factor in [1, max_zoom] about a random point (the same crop in
    every frame)."""
    flips = rng.random(len(frames)) < 0.5
    orders = np.stack([rng.permutation(3) if colour_orders else np.arange(3) for _ in frames])
    clips = [
        (clip[:, :, ::-1] if flip else clip)[..., order]
        for clip, flip, order in zip(frames, flips, orders, strict=True)
    ]
    if max_zoom > 1:
        clips = [zoom(clip, rng.uniform(1, max_zoom), rng) for clip in clips]
    return np.stack(clips)


def zoom(clip: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, H, W, 3] magnified `factor` times: a random crop, resized back bilinearly."""
    t, h, w, _ = clip.shape
    ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = torch.from_numpy(np.array(clip[:, top : top + ch, left : left + cw]))
    crop = rearrange(crop, "t h w c -> t c h w").float()
    resized = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return rearrange(resized.round().clamp(0, 255).to(torch.uint8), "t c h w -> t h w c").numpy()


def to_model_input(frames: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1] (the paper's input range)."""
    # a copy: batches from Ray are read-only views, which torch.from_numpy warns about
    return pixels_to_unit(torch.from_numpy(np.array(frames, order="C")).to(device))


def to_uint8_video(x: torch.Tensor) -> np.ndarray:
    """float [B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3]."""
    return unit_to_pixels(x).cpu().numpy()


def video_grid(originals: np.ndarray, recons: np.ndarray, max_clips: int = 4) -> np.ndarray:
    """One image: per clip a row of original frames above a row of reconstructed frames."""
    rows = []
    for original, recon in zip(originals[:max_clips], recons[:max_clips], strict=True):
        rows.append(np.concatenate(list(original), axis=1))  # [H, T*W, 3]
        rows.append(np.concatenate(list(recon), axis=1))
    return np.concatenate(rows, axis=0)
