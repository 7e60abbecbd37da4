"""Lookup-free quantisation (LFQ), MAGVIT-v2 section 3.1.

Each of the `bits` latent channels is quantised on its own to {-1, +1}; the token index is the
binary number formed by the signs, so the "codebook" is the set of 2^bits hypercube corners and
there is no embedding table to look up.

Entropy penalty (paper eq. 5): E[H(q(z))] - H[E(q(z))], with the soft assignment
q(c | z) = softmax_c(-||z - c||^2 / temperature) over all corners c in {-1, +1}^bits.
Because ||z - c||^2 = ||z||^2 + bits - 2 z.c, the softmax only depends on 2 z.c / temperature
= sum_i 2 z_i c_i / temperature, so it factorises over dimensions:

    q(c | z) = prod_i q_i(c_i | z_i),   q_i(+1 | z_i) = sigmoid(4 z_i / temperature).

Hence the per-token entropy is exactly sum_i H_binary(sigmoid(4 z_i / temperature)): O(bits)
per token instead of O(2^bits). The codebook term H[E(q)] does not factorise (the average over
tokens couples the dimensions), so, as in the paper, it is estimated on sub-groups of
`entropy_group_size` dimensions: each group's 2^g-way marginal is averaged over tokens and the
group entropies are summed. When one group covers all bits this is exact; otherwise it is the
sum of marginal entropies, an upper bound on the joint entropy (subadditivity).

Entropies are in nats and always computed in float32, also under bf16/fp16 autocast.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

_EPS = 1e-10  # floor for log(p) of averaged probabilities (softmax underflows at temperature 0.01)


@dataclass
class LFQConfig:
    bits: int  # log2 of the vocabulary size K; the latent has this many channels
    # Dimensions per codebook-entropy sub-group (min(group, bits) is used). When it does not
    # divide `bits`, the last group holds the remaining bits % group dimensions.
    entropy_group_size: int = 9
    temperature: float = 0.01  # of the soft assignment softmax(-||z - c||^2 / temperature)
    commitment_weight: float = 0.25

    def __post_init__(self) -> None:
        if self.bits < 1:
            raise ValueError(f"LFQConfig.bits must be >= 1, got {self.bits}")
        if self.entropy_group_size < 1:
            raise ValueError(
                f"LFQConfig.entropy_group_size must be >= 1, got {self.entropy_group_size}"
            )
        if self.temperature <= 0:
            raise ValueError(f"LFQConfig.temperature must be > 0, got {self.temperature}")


class QuantizerOutput(NamedTuple):
    codes: Tensor  # [B, C, T, H, W], straight-through quantised values
    indices: Tensor  # [B, T, H, W] int64
    losses: dict[str, Tensor]  # scalar tensors, see LFQ.forward / VectorQuantizer.forward


def corner_codes(bits: int, device: torch.device | None = None) -> Tensor:
    """All 2^bits hypercube corners in index order: row k holds the {-1, +1} code of index k."""
    indices = torch.arange(2**bits, device=device)
    return indices_to_bits(indices, bits).float() * 2 - 1  # [2^bits, bits]


def indices_to_bits(indices: Tensor, bits: int) -> Tensor:
    """[...] int -> [..., bits] in {0, 1}; bit i is (index >> i) & 1."""
    powers = torch.arange(bits, device=indices.device)
    return (indices.long().unsqueeze(-1) >> powers) & 1


def binary_entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise and stable for large |logits|."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def lfq_entropy(
    z: Tensor, temperature: float, group_size: int, across_workers: bool = False
) -> tuple[Tensor, Tensor]:
    """(mean per-token entropy, sub-group codebook entropy) of the soft assignment, float32.

    z: [N, bits] unquantised latents. See the module docstring for the derivation. With
    `across_workers` (data-parallel training) the codebook marginals are averaged over every
    worker's tokens, so the code usage it rewards is that of the global batch, not of the
    few clips on one worker.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        # exact per-token entropy: sum over dimensions of binary entropies
        per_token = binary_entropy_from_logits(4 * z / temperature).sum(-1).mean()

        codebook = z.new_zeros(())
        for z_group in z.split(min(group_size, z.shape[-1]), dim=-1):  # [N, g]
            codes = corner_codes(z_group.shape[-1], z.device)  # [2^g, g]
            # the group's 2^g-way marginal; the shared ||z||^2 + g term cancels in the softmax
            probs = (2 * z_group @ codes.t() / temperature).softmax(-1)  # [N, 2^g]
            avg_probs = probs.mean(0)  # [2^g]
            if across_workers:
                avg_probs = _global_mean(avg_probs)
            codebook = codebook - (avg_probs * avg_probs.clamp_min(_EPS).log()).sum()
    return per_token, codebook


def _global_mean(local: Tensor) -> Tensor:
    """The mean of `local` over all workers, with the gradient of this worker's share.

    Every worker computes the same loss from the global mean, so after DDP averages the
    gradients this equals differentiating through the all-reduce itself, without the
    deprecated autograd collective.
    """
    total = local.detach().clone()
    dist.all_reduce(total)
    return local + (total / dist.get_world_size() - local).detach()


def entropy_weight_at(
    step: int, final_weight: float, start_multiplier: float = 3.0, decay_steps: int = 2000
) -> float:
    """Entropy-loss weight: start_multiplier * final at step 0, linear to final by decay_steps."""
    if decay_steps <= 0:
        return final_weight
    progress = min(max(step, 0) / decay_steps, 1.0)
    return final_weight * (start_multiplier + (1.0 - start_multiplier) * progress)


def _check_factors(bits: int, num_factors: int) -> int:
    if num_factors < 1 or bits % num_factors != 0:
        raise ValueError(
            f"num_factors={num_factors} must be >= 1 and divide bits={bits} "
            "to split a token into equal sub-tokens"
        )
    return bits // num_factors


def factorize_indices(indices: Tensor, bits: int, num_factors: int) -> Tensor:
    """[...] token indices -> [..., num_factors] sub-indices (paper section 3.3).

    Sub-index j holds bits j*bits/m .. (j+1)*bits/m - 1 of the index (m = num_factors), i.e.
    sub-token j is the token of latent channels j*bits/m .. (j+1)*bits/m - 1.
    """
    sub_bits = _check_factors(bits, num_factors)
    shifts = torch.arange(num_factors, device=indices.device) * sub_bits
    return (indices.long().unsqueeze(-1) >> shifts) & (2**sub_bits - 1)


def unfactorize_indices(sub_indices: Tensor, bits: int, num_factors: int) -> Tensor:
    """Inverse of factorize_indices: [..., num_factors] -> [...]."""
    sub_bits = _check_factors(bits, num_factors)
    if sub_indices.shape[-1] != num_factors:
        raise ValueError(
            f"last dimension of sub_indices is {sub_indices.shape[-1]}, expected {num_factors}"
        )
    shifts = torch.arange(num_factors, device=sub_indices.device) * sub_bits
    return (sub_indices.long() << shifts).sum(-1)


class LFQ(nn.Module):
    """Lookup-free quantiser: sign per channel, index = sum_i 2^i [z_i > 0].

    A channel that is exactly 0 quantises to -1 (bit 0), as in paper eq. 3, so codes and
    indices always agree.
    """

    def __init__(self, config: LFQConfig):
        super().__init__()
        self.config = config
        self.register_buffer("powers", 2 ** torch.arange(config.bits), persistent=False)

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def codebook_size(self) -> int:
        return 2**self.config.bits

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z: [B, bits, T, H, W] -> QuantizerOutput.

        losses: "commitment" (weighted mean ||z - sg(q)||^2), "entropy" (= per_token_entropy -
        codebook_entropy, unweighted: the trainer applies entropy_weight_at), and the two terms.
        """
        if z.shape[1] != self.bits:
            raise ValueError(
                f"LFQ expects {self.bits} channels, got input of shape {tuple(z.shape)}"
            )
        quantized = torch.where(z > 0, 1.0, -1.0).to(z.dtype)  # [B, bits, T, H, W]
        codes = z + (quantized - z).detach()  # straight-through estimator
        indices = self.codes_to_indices(quantized)  # [B, T, H, W]

        cfg = self.config
        z_tokens = rearrange(z, "b c t h w -> (b t h w) c")
        # collective only in training, where every worker runs this forward in step
        across = self.training and dist.is_initialized() and dist.get_world_size() > 1
        per_token, codebook = lfq_entropy(
            z_tokens, cfg.temperature, cfg.entropy_group_size, across_workers=across
        )
        commitment = F.mse_loss(z.float(), quantized.float()) * cfg.commitment_weight
        losses = {
            "commitment": commitment,
            "entropy": per_token - codebook,
            "per_token_entropy": per_token,
            "codebook_entropy": codebook,
        }
        return QuantizerOutput(codes, indices, losses)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """[B, bits, T, H, W] (any real values; sign decides) -> [B, T, H, W] int64."""
        bits_set = rearrange(codes > 0, "b c t h w -> b t h w c").long()
        return (bits_set * self.powers).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """[B, T, H, W] int -> [B, bits, T, H, W] float32 in {-1, +1}."""
        codes = indices_to_bits(indices, self.bits).float() * 2 - 1
        return rearrange(codes, "b t h w c -> b c t h w")
