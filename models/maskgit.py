"""MaskGIT non-autoregressive sampling for the masked token transformer (models.mlm).

Start with every token masked (or the first n set to condition tokens, which are never masked
or changed). At step s of S (progress p = (s + 1) / S): predict all masked tokens, sample each
one (with factorisation, each sub-token from its own head; the confidence is the joint
log-probability, the sum of the sub-token log-probabilities), then re-mask the
floor(maskable * cos(pi/2 * p)) least confident of the newly sampled tokens (at least 1 until
the last step, 0 after it). The confidence gets Gumbel noise scaled by
choice_temperature * (1 - p), which anneals to 0.

Classifier-free guidance: logits = cond + w * (cond - uncond), uncond using the no-label id,
w = guidance_scale * schedule(p). With w = 0 the unconditional pass is skipped altogether.

All randomness comes from one torch.Generator, so a seed fixes the samples.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from models.lfq import unfactorize_indices
from models.mlm import MASK_ID, MaskedTokenTransformer

GuidanceSchedule = Literal["constant", "linear", "cosine"]


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 12
    choice_temperature: float = 4.5  # Gumbel noise on the confidence, annealed to 0
    guidance_scale: float = 0.0  # w of classifier-free guidance; 0 = conditional model only
    # w(p) at progress p in (0, 1]: "constant" w; "linear" w * p; "cosine" (MDT, Gao et al.
    # 2023, the schedule the paper adopts) w * (1 - cos(pi * p^guidance_power)) / 2
    guidance_schedule: GuidanceSchedule = "linear"
    guidance_power: float = 1.0
    temperature: float = 1.0  # softmax temperature of the token distributions

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.choice_temperature < 0:
            raise ValueError(f"choice_temperature must be >= 0, got {self.choice_temperature}")
        if self.guidance_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(
                f"guidance_schedule must be 'constant', 'linear' or 'cosine', "
                f"got {self.guidance_schedule!r}"
            )

    def guidance_at(self, progress: float) -> float:
        """Guidance weight w at progress in (0, 1]."""
        if self.guidance_schedule == "constant":
            return self.guidance_scale
        if self.guidance_schedule == "linear":
            return self.guidance_scale * progress
        return self.guidance_scale * (1 - math.cos(math.pi * progress**self.guidance_power)) / 2


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _gumbel(shape: torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device)
    return -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))


def predict_tokens(
    model: MaskedTokenTransformer,
    tokens: Tensor,
    labels: Tensor,
    guidance: float,
    temperature: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Sample a token at every position -> (tokens [B, N], joint log-probability [B, N])."""
    if guidance == 0:
        logits = model(tokens, labels).float()  # [B, N, m, V]
    else:
        no_label = torch.full_like(labels, model.no_label_id)
        both = model(torch.cat([tokens, tokens]), torch.cat([labels, no_label])).float()
        cond, uncond = both.chunk(2)
        logits = cond + guidance * (cond - uncond)
    log_probs = (logits / temperature).log_softmax(-1)
    sub = (log_probs + _gumbel(log_probs.shape, generator, log_probs.device)).argmax(-1)
    confidence = log_probs.gather(-1, sub[..., None]).squeeze(-1).sum(-1)  # log prod_j p_j
    cfg = model.config
    return unfactorize_indices(sub, cfg.bits, cfg.num_factors), confidence


def _start(
    model: MaskedTokenTransformer,
    labels: Tensor,
    condition_tokens: Tensor | None,
    generator: torch.Generator | None,
    seed: int,
) -> tuple[Tensor, int, torch.Generator]:
    """-> (initial tokens [B, N], number of condition tokens, generator)."""
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device).manual_seed(seed)
    batch, length = labels.shape[0], model.num_tokens
    tokens = torch.full((batch, length), MASK_ID, dtype=torch.long, device=device)
    if condition_tokens is None:
        return tokens, 0, generator
    num_condition = condition_tokens.shape[-1]
    if condition_tokens.shape != (batch, num_condition) or num_condition >= length:
        raise ValueError(
            f"condition_tokens must be [B={batch}, n < {length}], "
            f"got {tuple(condition_tokens.shape)}"
        )
    vocab = model.config.vocab_size
    if condition_tokens.min() < 0 or condition_tokens.max() >= vocab:
        raise ValueError(f"condition token values must lie in [0, {vocab})")
    tokens[:, :num_condition] = condition_tokens
    return tokens, num_condition, generator


@torch.no_grad()
def sample(
    model: MaskedTokenTransformer,
    labels: Tensor,
    config: SamplerConfig = SamplerConfig(),
    generator: torch.Generator | None = None,
    seed: int = 0,
    condition_tokens: Tensor | None = None,
) -> Tensor:
    """MaskGIT decoding of the model's grid -> int64 tokens [B, N] in [0, 2^bits).

    labels [B] (model.no_label_id for unconditional samples); condition_tokens [B, n]: the
    first n tokens in raster order, kept as given. Without a generator, one seeded with `seed`.
    """
    tokens, num_condition, generator = _start(model, labels, condition_tokens, generator, seed)
    maskable = model.num_tokens - num_condition
    with _eval_mode(model):
        for step in range(config.steps):
            progress = (step + 1) / config.steps
            masked = tokens == MASK_ID  # [B, N]; the same count in every row
            sampled, confidence = predict_tokens(
                model,
                tokens,
                labels,
                config.guidance_at(progress),
                config.temperature,
                generator,
            )
            tokens = torch.where(masked, sampled, tokens)
            still_masked = int(masked[0].sum())
            if step == config.steps - 1 or still_masked == 0:
                continue
            scheduled = math.floor(maskable * math.cos(math.pi / 2 * progress))
            mask_len = min(max(1, min(still_masked - 1, scheduled)), still_masked)
            noise = config.choice_temperature * (1 - progress)
            confidence = confidence + noise * _gumbel(confidence.shape, generator, tokens.device)
            confidence = confidence.masked_fill(~masked, math.inf)  # decided tokens stay
            remask = confidence.topk(mask_len, dim=-1, largest=False).indices  # [B, mask_len]
            tokens = tokens.scatter(1, remask, MASK_ID)
    return tokens


@torch.no_grad()
def sample_token_by_token(
    model: MaskedTokenTransformer,
    labels: Tensor,
    config: SamplerConfig = SamplerConfig(),
    generator: torch.Generator | None = None,
    seed: int = 0,
    condition_tokens: Tensor | None = None,
    order: Literal["raster", "confidence"] = "raster",
) -> Tensor:
    """One token per network call (N - n calls): the next masked position in raster order, or
    the most confident masked position. Uses config's temperature and guidance (progress =
    fraction of tokens decided); steps and choice_temperature do not apply."""
    if order not in ("raster", "confidence"):
        raise ValueError(f"order must be 'raster' or 'confidence', got {order!r}")
    tokens, num_condition, generator = _start(model, labels, condition_tokens, generator, seed)
    maskable = model.num_tokens - num_condition
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    with _eval_mode(model):
        for step in range(maskable):
            guidance = config.guidance_at((step + 1) / maskable)
            sampled, confidence = predict_tokens(
                model, tokens, labels, guidance, config.temperature, generator
            )
            if order == "raster":
                position = torch.full_like(rows, num_condition + step)
            else:
                position = confidence.masked_fill(tokens != MASK_ID, -math.inf).argmax(-1)
            tokens[rows, position] = sampled[rows, position]
    return tokens
