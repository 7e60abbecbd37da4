"""Generating videos: MaskGIT tokens from the masked model, pixels from the tokenizer."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from magvit.params import SamplingParams
from models.maskgit import SamplerConfig, sample
from models.mlm import MaskedTokenTransformer
from models.tokenizer import MagvitTokenizer


def sampler_config(params: SamplingParams) -> SamplerConfig:
    return SamplerConfig(
        steps=params.steps,
        choice_temperature=params.choice_temperature,
        guidance_scale=params.guidance_scale,
        guidance_schedule=params.guidance_schedule,
        temperature=params.temperature,
    )


def tokens_to_video(tokenizer: MagvitTokenizer, tokens: torch.Tensor, grid) -> np.ndarray:
    """Flat token grids [B, N] -> uint8 videos [B, T, H, W, 3]."""
    t, h, w = grid
    return tokenizer.decode(rearrange(tokens, "b (t h w) -> b t h w", t=t, h=h, w=w)).numpy()


def class_samples(
    mlm: MaskedTokenTransformer,
    tokenizer: MagvitTokenizer,
    class_id: int | None,
    count: int,
    config: SamplerConfig,
    seed: int,
) -> np.ndarray:
    """`count` videos of class `class_id` (None: unconditional), uint8 [count, T, H, W, 3].
    Sample i is drawn with its own seed, seed + i, so any one of them can be redrawn alone."""
    if class_id is not None and not 0 <= class_id < mlm.config.num_classes:
        raise ValueError(f"class id must lie in [0, {mlm.config.num_classes}), got {class_id}")
    label = mlm.no_label_id if class_id is None else class_id
    labels = torch.full((1,), label, dtype=torch.long)
    tokens = torch.cat([sample(mlm, labels, config, seed=seed + i) for i in range(count)])
    return tokens_to_video(tokenizer, tokens, mlm.config.grid)


def predict_frames(
    mlm: MaskedTokenTransformer,
    tokenizer: MagvitTokenizer,
    video: np.ndarray,
    condition_frames: int,
    count: int,
    config: SamplerConfig,
    seed: int,
) -> np.ndarray:
    """Continue a uint8 clip [T, H, W, 3]: its first `condition_frames` latent frames are kept."""
    grid_tokens = tokenizer.encode(torch.from_numpy(video[None]))  # [1, t, h, w]
    if tuple(grid_tokens.shape[1:]) != tuple(mlm.config.grid):
        raise ValueError(
            f"the condition clip gives a token grid {tuple(grid_tokens.shape[1:])}, "
            f"the model expects {tuple(mlm.config.grid)}"
        )
    _, h, w = mlm.config.grid
    condition = grid_tokens.flatten(1)[:, : condition_frames * h * w].repeat(count, 1)
    labels = torch.full((count,), mlm.no_label_id, dtype=torch.long)
    tokens = sample(mlm, labels, config, seed=seed, condition_tokens=condition)
    return tokens_to_video(tokenizer, tokens, mlm.config.grid)


def tile_clips(videos: np.ndarray, columns: int | None = None) -> np.ndarray:
    """[N, T, H, W, 3] -> [T, rows*H, columns*W, 3]: the clips side by side, frame by frame."""
    count = len(videos)
    columns = columns or count
    rows = -(-count // columns)
    padded = np.zeros((rows * columns, *videos.shape[1:]), dtype=videos.dtype)
    padded[:count] = videos
    return rearrange(padded, "(r c) t h w ch -> t (r h) (c w) ch", r=rows, c=columns)
