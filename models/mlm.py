"""Masked token transformer (MaskGIT-style MLM), MAGVIT-v2 sections 3.2 and 4.1.

The tokens of a clip, a grid [t, h, w] flattened in raster order, are modelled by a
bidirectional transformer that predicts every masked token from the visible ones and a
condition: a class label, or the tokens of the first frames (frame prediction, where those
positions are simply never masked).

Conventions:
- Mask marker: a masked input position holds MASK_ID = -1 (for every vocabulary size). It is
  embedded with one learned mask vector shared by all positions, so the sub-token tables hold
  exactly the 2^(bits/m) real sub-tokens and can be tied to the output heads.
- Class label: an embedding from a table of num_classes + 1 entries, added to the input of
  every position; the last id (num_classes, `no_label_id`) means "no label" and serves
  unconditional sampling and classifier-free guidance. (A single prepended label token, the
  usual MaskGIT layout, was ignored by the cpu profile's model: val loss with the true, no
  and a wrong label agreed to 0.01 nats. Added at every position the label cannot be.)
- Token factorisation (paper section 3.2): a token of `bits` bits is split into m sub-tokens of
  bits/m bits (models.lfq.factorize_indices). Each sub-token has its own embedding table
  E_j [2^(bits/m), dim]; the input embedding is sum_j E_j[sub_j]. The output is weight-tied:
  logits_j = h @ E_j^T + b_j, m heads of 2^(bits/m) classes. m = 1 is the plain model.
"""

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.lfq import factorize_indices
from models.pretrained import DictConfig, Pretrained

MASK_ID = -1  # input token value of a masked position


@dataclass(frozen=True)
class MLMConfig(DictConfig):
    bits: int = 10  # vocabulary 2^bits, as the tokenizer's LFQ
    num_factors: int = 2  # m sub-tokens of bits/m bits each; 1 = no factorisation
    grid: tuple[int, int, int] = (3, 8, 8)  # token grid (t, h, w) of one clip
    num_classes: int = 8  # real class ids are 0 .. num_classes - 1 (0 for unlabelled data)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.bits < 1 or self.num_factors < 1 or self.bits % self.num_factors:
            raise ValueError(
                f"num_factors={self.num_factors} must be >= 1 and divide bits={self.bits}"
            )
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(f"grid must be three positive sizes (t, h, w), got {self.grid}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.dim % self.heads:
            raise ValueError(f"heads={self.heads} must divide dim={self.dim}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def vocab_size(self) -> int:
        return 2**self.bits

    @property
    def sub_vocab_size(self) -> int:
        return 2 ** (self.bits // self.num_factors)

    @classmethod
    def preset(cls, name: Literal["cpu", "paper"], **overrides) -> "MLMConfig":
        """Named configuration; `overrides` replace fields of it, e.g. num_classes=101.

        "cpu": 3x8x8 tokens of 18 bits, trains on 2 CPU cores. It predicts each token bit by
        bit (num_factors = bits: one 2-way head per LFQ bit), not as the paper's 2 x 2^9
        sub-tokens: at equal steps that predicted more held-out tokens exactly (0.39 against
        0.34 at 10% and 50% masked) and beat copying in frame prediction (README, MLM table).
        "paper": 5x16x16 tokens of 18 bits (2 x 2^9), MAGVIT's 24 x 1024 transformer (~305M).
        """
        if name == "cpu":
            bits = overrides.get("bits", cls.bits)
            base = cls(bits=bits, num_factors=bits)
        elif name == "paper":
            base = cls(
                bits=18,
                num_factors=2,
                grid=(5, 16, 16),
                num_classes=101,  # UCF-101
                dim=1024,
                depth=24,
                heads=16,
                dropout=0.1,
            )
        else:
            raise ValueError(f"unknown preset {name!r}; choose 'cpu' or 'paper'")
        return replace(base, **overrides)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, D], bidirectional: no attention mask
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class MaskedTokenTransformer(Pretrained, nn.Module):
    """tokens [B, N] (MASK_ID where masked) + labels [B] -> logits [B, N, m, 2^(bits/m)]."""

    config_class = MLMConfig
    checkpoint_label = "MLM"

    def __init__(self, config: MLMConfig):
        super().__init__()
        self.config = config
        cfg = config
        t, h, w = cfg.grid
        # sub-token tables [m, 2^(bits/m), D]: input embeddings and tied output heads
        self.token_embedding = nn.Parameter(
            torch.randn(cfg.num_factors, cfg.sub_vocab_size, cfg.dim) * 0.02
        )
        self.mask_embedding = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.label_embedding = nn.Embedding(cfg.num_classes + 1, cfg.dim)
        # factorised learned positions: pos(t, h, w) = P_t[t] + P_h[h] + P_w[w]
        self.pos_t = nn.Parameter(torch.randn(t, cfg.dim) * 0.02)
        self.pos_h = nn.Parameter(torch.randn(h, cfg.dim) * 0.02)
        self.pos_w = nn.Parameter(torch.randn(w, cfg.dim) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        # BERT/MaskGIT-style transform before the tied output projection
        self.head_transform = nn.Sequential(
            nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim)
        )
        self.head_bias = nn.Parameter(torch.zeros(cfg.num_factors, cfg.sub_vocab_size))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def no_label_id(self) -> int:
        return self.config.num_classes

    def positions(self) -> Tensor:
        """[N, D] position embeddings in raster order (t, h, w)."""
        pos = self.pos_t[:, None, None] + self.pos_h[None, :, None] + self.pos_w[None, None, :]
        return rearrange(pos, "t h w d -> (t h w) d")

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """[B, N] tokens with MASK_ID -> [B, N, D]: sum of the sub-token embeddings, or the mask."""
        cfg = self.config
        masked = tokens == MASK_ID
        sub = factorize_indices(tokens.masked_fill(masked, 0), cfg.bits, cfg.num_factors)
        factor = torch.arange(cfg.num_factors, device=tokens.device)
        embedded = self.token_embedding[factor, sub].sum(-2)  # [B, N, m, D] -> [B, N, D]
        return torch.where(masked[..., None], self.mask_embedding, embedded)

    def forward(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """tokens: int64 [B, N] in [0, 2^bits) or MASK_ID; labels: int64 [B] in
        [0, num_classes] (num_classes = no label) -> logits [B, N, m, 2^(bits/m)]."""
        cfg = self.config
        if tokens.ndim != 2 or tokens.shape[1] != cfg.num_tokens:
            raise ValueError(
                f"expected tokens [B, {cfg.num_tokens}] (grid {cfg.grid}), "
                f"got {tuple(tokens.shape)}"
            )
        has_values = tokens.device.type != "meta"  # shape checks only on the meta device
        if has_values and ((tokens < MASK_ID) | (tokens >= cfg.vocab_size)).any():
            raise ValueError(f"token values must be MASK_ID={MASK_ID} or in [0, {cfg.vocab_size})")
        out_of_range = has_values and ((labels < 0) | (labels > cfg.num_classes)).any()
        if labels.shape != tokens.shape[:1] or out_of_range:
            raise ValueError(
                f"labels must be [B] in [0, {cfg.num_classes}] ({cfg.num_classes} = no label)"
            )
        x = self.embed_tokens(tokens) + self.positions()  # [B, N, D]
        x = self.drop(x + self.label_embedding(labels)[:, None])  # the label at every position
        for block in self.blocks:
            x = block(x)
        x = self.head_transform(self.norm(x))
        return torch.einsum("bnd,mvd->bnmv", x, self.token_embedding) + self.head_bias


def _factor_shape(logits: Tensor) -> tuple[int, int]:
    """logits [..., m, V] -> (bits, m)."""
    num_factors, sub_vocab = logits.shape[-2:]
    sub_bits = sub_vocab.bit_length() - 1
    if sub_vocab != 2**sub_bits:
        raise ValueError(f"head size {sub_vocab} is not a power of two")
    return sub_bits * num_factors, num_factors


def masked_token_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Sum over the m sub-token cross-entropies, averaged over the masked positions only.

    logits [B, N, m, V]; targets int64 [B, N] full token ids; mask bool [B, N].
    """
    if not mask.any():
        raise ValueError("masked_token_loss needs at least one masked position")
    bits, num_factors = _factor_shape(logits)
    sub_targets = factorize_indices(targets[mask], bits, num_factors)  # [K, m]
    selected = logits[mask].float()  # [K, m, V]
    ce = F.cross_entropy(
        rearrange(selected, "k m v -> (k m) v"), sub_targets.flatten(), reduction="none"
    )
    return rearrange(ce, "(k m) -> k m", m=num_factors).sum(-1).mean()


@torch.no_grad()
def masked_token_accuracy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Fraction of masked positions whose argmax token is right (every sub-token right)."""
    if not mask.any():
        raise ValueError("masked_token_accuracy needs at least one masked position")
    bits, num_factors = _factor_shape(logits)
    sub_targets = factorize_indices(targets[mask], bits, num_factors)  # [K, m]
    correct = (logits[mask].argmax(-1) == sub_targets).all(-1)
    return correct.float().mean()


def cosine_mask_schedule(r: Tensor | float) -> Tensor:
    """Fraction of tokens masked at ratio r in [0, 1]: cos(pi/2 * r) (1 at r = 0, 0 at r = 1)."""
    return torch.cos(math.pi / 2 * torch.as_tensor(r, dtype=torch.float64))


def num_masked(ratios: Tensor, maskable: int) -> Tensor:
    """Training mask count per sample: ceil(schedule(r) * maskable), clamped to [1, maskable]."""
    counts = torch.ceil(cosine_mask_schedule(ratios) * maskable).long()
    return counts.clamp(1, maskable)


def mask_tokens(
    tokens: Tensor,
    generator: torch.Generator | None = None,
    num_condition_tokens: int = 0,
    ratios: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """tokens [B, N] -> (input with MASK_ID at the masked positions, mask bool [B, N]).

    Per sample, r ~ U(0, 1) (or `ratios` [B] when given) and num_masked(r, maskable) positions
    are masked, chosen uniformly at random among positions num_condition_tokens .. N - 1; the
    first num_condition_tokens positions (condition frames) are never masked. The generator
    must live on tokens.device.
    """
    batch, length = tokens.shape
    maskable = length - num_condition_tokens
    if not 0 <= num_condition_tokens < length:
        raise ValueError(f"num_condition_tokens={num_condition_tokens} must lie in [0, {length})")
    if ratios is None:
        ratios = torch.rand(batch, generator=generator, device=tokens.device)
    counts = num_masked(ratios, maskable).to(tokens.device)  # [B]
    # random ranks of the maskable positions; a position is masked when its rank < count
    scores = torch.rand(batch, maskable, generator=generator, device=tokens.device)
    ranks = scores.argsort(-1).argsort(-1)
    mask = F.pad(ranks < counts[:, None], (num_condition_tokens, 0), value=False)
    return tokens.masked_fill(mask, MASK_ID), mask


def drop_labels(
    labels: Tensor, no_label_id: int, p: float = 0.1, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by no_label_id with probability p (classifier-free guidance)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return labels.masked_fill(drop, no_label_id)
