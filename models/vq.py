"""Vector quantisation (VQ-VAE style), the baseline of the paper's LFQ-vs-VQ comparison (Fig. 1).

Same interface as models.lfq.LFQ: forward(z [B, dim, T, H, W]) -> QuantizerOutput.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.lfq import QuantizerOutput


@dataclass
class VQConfig:
    codebook_size: int
    dim: int  # code vector dimension = latent channels
    # beta of VQ-VAE: weight of ||z - sg(e)||^2 (pulls the encoder towards its code)
    commitment_weight: float = 0.25
    # weight of ||sg(z) - e||^2 (moves the codes towards the encoder outputs)
    codebook_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.codebook_size < 1 or self.dim < 1:
            raise ValueError(
                f"VQConfig needs codebook_size >= 1 and dim >= 1, "
                f"got codebook_size={self.codebook_size}, dim={self.dim}"
            )


class VectorQuantizer(nn.Module):
    """Nearest-codeword lookup in a learned codebook, straight-through gradient."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.codebook = nn.Embedding(config.codebook_size, config.dim)
        bound = 1.0 / config.codebook_size
        nn.init.uniform_(self.codebook.weight, -bound, bound)  # as in the VQ-VAE reference code

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z: [B, dim, T, H, W] -> QuantizerOutput.

        losses: "commitment" = codebook_weight * ||sg(z) - e||^2 + commitment_weight *
        ||z - sg(e)||^2 (means); the entropy keys are zero (VQ has no entropy penalty).
        """
        if z.shape[1] != self.config.dim:
            raise ValueError(
                f"VectorQuantizer expects {self.config.dim} channels, got shape {tuple(z.shape)}"
            )
        indices = self.codes_to_indices(z)  # [B, T, H, W]
        quantized = self.indices_to_codes(indices).to(z.dtype)  # [B, dim, T, H, W]

        cfg = self.config
        codebook_loss = F.mse_loss(quantized.float(), z.detach().float())
        commitment_loss = F.mse_loss(z.float(), quantized.detach().float())
        zero = z.new_zeros((), dtype=torch.float32)
        losses = {
            "commitment": cfg.codebook_weight * codebook_loss
            + cfg.commitment_weight * commitment_loss,
            "entropy": zero,
            "per_token_entropy": zero,
            "codebook_entropy": zero,
        }
        codes = z + (quantized - z).detach()  # straight-through estimator
        return QuantizerOutput(codes, indices, losses)

    @torch.no_grad()
    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """[B, dim, T, H, W] -> [B, T, H, W] int64 index of the nearest codeword (L2)."""
        b, _, t, h, w = codes.shape
        flat = rearrange(codes, "b c t h w -> (b t h w) c").float()
        weight = self.codebook.weight.float()  # [K, dim]
        with torch.autocast(device_type=codes.device.type, enabled=False):  # float32 distances
            # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is constant per row
            distances = weight.pow(2).sum(-1) - 2 * flat @ weight.t()  # [N, K]
        indices = distances.argmin(-1)
        return rearrange(indices, "(b t h w) -> b t h w", b=b, t=t, h=h, w=w)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """[B, T, H, W] int -> [B, dim, T, H, W] codewords."""
        return rearrange(self.codebook(indices.long()), "b t h w c -> b c t h w")
