"""Reconstruction quality of a tokenizer on uint8 clips: the one measure that training
(validation PSNR), the train_tokenizer stage (test figures) and `evaluate` all use."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from magvit.training.clip_batches import to_model_input, to_uint8_video
from models.recon_metrics import codebook_usage, psnr, ssim


@torch.no_grad()
def reconstruct_clips(model: nn.Module, clips: np.ndarray, device, batch_size: int = 4) -> dict:
    """PSNR / SSIM of reconstructions and codebook usage on uint8 clips [N, T, H, W, 3];
    also the reconstructions ("recon", uint8) and token grids ("tokens", [N, t, h, w])."""
    model.eval()
    recons, tokens = [], []
    for start in range(0, len(clips), batch_size):
        x = to_model_input(clips[start : start + batch_size], device)
        quantized = model.encode_to_codes(x)
        recons.append(to_uint8_video(model.decode_codes(quantized.codes)))
        tokens.append(quantized.indices.cpu())
    recon, tokens = np.concatenate(recons), torch.cat(tokens)
    usage, perplexity = codebook_usage(tokens, model.codebook_size)
    return {
        "psnr": psnr(clips, recon),
        "ssim": ssim(clips, recon),
        "codebook_utilisation": usage,
        "perplexity": perplexity,
        "recon": recon,
        "tokens": tokens.numpy(),
    }
