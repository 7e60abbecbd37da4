"""Reconstruction and codebook metrics: PSNR, SSIM, codebook utilisation and perplexity."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB over whole arrays (uint8 videos [.., H, W, 3]); inf when identical."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean SSIM over frames of uint8 [..., H, W, 3] arrays (scikit-image, Gaussian window)."""
    ref = reference.reshape(-1, *reference.shape[-3:])
    out = test.reshape(-1, *test.shape[-3:])
    scores = [
        structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True)
        for a, b in zip(ref, out, strict=True)
    ]
    return float(np.mean(scores))


def codebook_usage(tokens: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(utilisation, perplexity exp(H) of the token histogram).

    Utilisation = distinct codes used / min(K, number of tokens): a set of fewer tokens
    than codes can at best use one code per token.
    """
    counts = torch.bincount(tokens.flatten().long(), minlength=codebook_size).double()
    probs = counts / counts.sum()
    nonzero = probs[probs > 0]
    entropy = -(nonzero * nonzero.log()).sum()
    reachable = min(codebook_size, tokens.numel())
    return float((counts > 0).sum() / reachable), float(entropy.exp())
