"""Reconstruction and codebook metrics: PSNR, SSIM, MS-SSIM, codebook utilisation, perplexity."""

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


# MS-SSIM (Wang et al. 2003): the standard five scale weights and the Gaussian window.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL_SIZE = 11
MS_SSIM_SIGMA = 1.5


def ms_ssim_scales(height: int, width: int) -> int:
    """How many of the standard MS-SSIM scales frames of this size allow (1 to 5).

    The coarsest scale must still hold the 11-px window, as torchmetrics checks it
    (min side // max(1, (k - 1)^2) >= 11), and be larger than the window's reflect padding
    (side // 2^(k - 1) > 5). So: 5 scales from 176 px, 4 from 99, 3 from 44 (64 x 64 clips),
    2 from 12 (32 x 32 clips), 1 from 11. Raises ValueError below 11 px.
    """
    side = min(height, width)
    fitting = [k for k in range(1, len(MS_SSIM_BETAS) + 1) if _scales_fit(side, k)]
    if not fitting:
        raise ValueError(
            f"MS-SSIM needs frames of at least {MS_SSIM_KERNEL_SIZE} x {MS_SSIM_KERNEL_SIZE} px "
            f"(one {MS_SSIM_KERNEL_SIZE}-px window), got {height} x {width}"
        )
    return max(fitting)


def _scales_fit(side: int, scales: int) -> bool:
    coarsest = side // 2 ** (scales - 1)
    torchmetrics_limit = side // max(1, (scales - 1) ** 2)
    return torchmetrics_limit >= MS_SSIM_KERNEL_SIZE and coarsest > MS_SSIM_KERNEL_SIZE // 2


def ms_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean MS-SSIM over frames of uint8 [..., H, W, 3] arrays (torchmetrics, 11-px Gaussian
    window, sigma 1.5, data range 255; negative contrast terms clipped to 0, torchmetrics'
    `normalize="relu"`, so heavy distortion scores 0 rather than NaN).

    Documented deviation: the standard 5 scales need frames of 176 px or more. Smaller frames
    use the first `ms_ssim_scales(H, W)` of the standard weights, not renormalised (3 scales at
    64 x 64, 2 at 32 x 32), so scores are comparable only between frames of the same size, and
    with fewer scales they sit closer to 1 than the 5-scale metric would. Computed in float32
    (within 1e-5 of float64, and ~10x faster on CPU).
    """
    # imported here: torchmetrics pulls in scipy.signal and matplotlib (~1 CPU s), which
    # every training process and Ray Train worker would pay for a metric only evaluate uses
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    ref, out = _frames_nchw(reference), _frames_nchw(test)
    scales = ms_ssim_scales(*ref.shape[-2:])
    score = multiscale_structural_similarity_index_measure(
        out,
        ref,
        gaussian_kernel=True,
        kernel_size=MS_SSIM_KERNEL_SIZE,
        sigma=MS_SSIM_SIGMA,
        data_range=255.0,
        betas=MS_SSIM_BETAS[:scales],
        normalize="relu",
    )
    return float(score)


def _frames_nchw(video: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [N, 3, H, W] frames."""
    frames = video.reshape(-1, *video.shape[-3:]).astype(np.float32)
    return torch.from_numpy(frames).permute(0, 3, 1, 2)
