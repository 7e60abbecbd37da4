"""MAGVIT-v2 causal 3D CNN video tokenizer (paper section 3.2).

Encoder: causal conv, then per level `num_res_blocks[level]` residual blocks and (except at the last
level) a strided-conv downsampler that halves H and W and, at the late levels flagged in
`temporal_downsample`, also halves time (1 + 2t -> 1 + t frames). Decoder: the mirror image,
with depth-to-space upsamplers and one adaptive GroupNorm, conditioned on the quantised
latents, before the residual blocks of each resolution. Quantiser: LFQ (default) or VQ.

One set of weights tokenizes images (T = 1 -> 1 latent frame) and clips of 1 + 4k frames
(-> 1 + k latent frames) with the same vocabulary, because every layer is causal in time.
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.causal import (
    CausalConv3d,
    DepthToSpaceUpsample,
    FrameGroupNorm,
    PadMode,
    ResBlock3d,
    SpaceTimeDownsample,
    causal_resize,
)
from models.lfq import LFQ, LFQConfig, QuantizerOutput
from models.pretrained import DictConfig, Pretrained
from models.vq import VectorQuantizer, VQConfig


@dataclass(frozen=True)
class TokenizerConfig(DictConfig):
    """Architecture and quantiser of a MagvitTokenizer; the defaults are the "cpu" preset."""

    channels: int = 16  # width of the first level
    # one per level (resolution). The cpu preset's 16-32-32-128 at 64-32-16-8 pixels: widening
    # the 32x32 level from 16 to 32 channels gave +2.4 dB at 500 steps (README, ablation 22)
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 8)
    # residual blocks per level, in the encoder and in the decoder; the cpu preset has none at
    # full resolution, where a block costs as much as all coarser levels together
    num_res_blocks: tuple[int, ...] = (0, 1, 1, 1)
    # one flag per downsampling stage (levels - 1): does it also halve time? Late = last ones.
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    temporal_kernel: int = 3  # 1 gives a per-frame (2D image) tokenizer, see models.inflation
    # the first `spatial_levels` levels (the highest resolutions) use 1x3x3 kernels: time is
    # mixed at the coarser levels, where a 3x3x3 kernel costs a fraction (cpu profile)
    spatial_levels: int = 1
    norm_groups: int = 8
    pad_mode: PadMode = "replicate"  # causal temporal padding: copies of frame 0, or zeros
    quantizer: Literal["lfq", "vq"] = "lfq"
    bits: int = 18  # LFQ: vocabulary K = 2**bits (the paper's 2^18), latent channels = bits
    entropy_group_size: int = 9  # LFQ codebook-entropy sub-group size
    lfq_temperature: float = 0.01
    commitment_weight: float = 0.25
    vq_codebook_size: int = 1024  # VQ only
    vq_dim: int = 8  # VQ only: latent channels
    # the clip shape the preset is sized for (any 1 + k*temporal_factor frames works)
    num_frames: int = 9
    resolution: int = 64

    def __post_init__(self) -> None:
        levels = len(self.channel_multipliers)
        if len(self.num_res_blocks) != levels or min(self.num_res_blocks) < 0:
            raise ValueError(
                f"num_res_blocks needs one count >= 0 per level ({levels}), "
                f"got {self.num_res_blocks}"
            )
        if levels < 1 or len(self.temporal_downsample) != levels - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per downsampling stage ({levels - 1} for "
                f"{levels} channel_multipliers), got {self.temporal_downsample}"
            )
        if self.quantizer not in ("lfq", "vq"):
            raise ValueError(f"quantizer must be 'lfq' or 'vq', got {self.quantizer!r}")
        widths = [self.channels * m for m in self.channel_multipliers]
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"norm_groups={self.norm_groups} must divide every width {widths}")
        if self.temporal_kernel < 1 or (self.temporal_factor > 1 and self.temporal_kernel < 2):
            raise ValueError("temporal downsampling needs temporal_kernel >= 2")
        if not 0 <= self.spatial_levels < levels or any(
            self.temporal_downsample[: self.spatial_levels]
        ):
            raise ValueError(
                f"spatial_levels={self.spatial_levels} must be in [0, {levels}) and below the "
                f"first temporal downsampling stage (temporal_downsample="
                f"{self.temporal_downsample})"
            )

    def level_temporal_kernel(self, level: int) -> int:
        """Temporal kernel size of the convolutions at one level (0 = full resolution)."""
        return 1 if level < self.spatial_levels else self.temporal_kernel

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def latent_channels(self) -> int:
        return self.bits if self.quantizer == "lfq" else self.vq_dim

    @property
    def codebook_size(self) -> int:
        return 2**self.bits if self.quantizer == "lfq" else self.vq_codebook_size

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (t, h, w) of a clip; ValueError if the clip shape is not allowed."""
        tf, sf = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % tf or height % sf or width % sf or min(height, width) < 1:
            raise ValueError(
                f"clip of T={frames}, H={height}, W={width} not allowed: T must be 1 + {tf}*k "
                f"(1, {1 + tf}, {1 + 2 * tf}, ...) and H, W positive multiples of {sf}"
            )
        return 1 + (frames - 1) // tf, height // sf, width // sf

    @classmethod
    def preset(cls, name: Literal["cpu", "paper"]) -> "TokenizerConfig":
        """Named configurations.

        cpu: 9x64x64 -> 3x8x8 tokens, K = 2^18, small enough to train on 2 CPU cores: no
        residual blocks and per-frame kernels at full resolution (where a block costs as much
        as all coarser levels together), 3x3x3 kernels below.
        paper: 17x128x128 -> 5x16x16 tokens, K = 2^18, paper-sized widths and depth.
        """
        if name == "cpu":
            return cls()
        if name == "paper":
            return cls(
                channels=128,
                channel_multipliers=(1, 2, 2, 4),
                num_res_blocks=(4, 4, 4, 4),
                spatial_levels=0,
                norm_groups=32,
                bits=18,
                num_frames=17,
                resolution=128,
            )
        raise ValueError(f"unknown preset {name!r}; choose 'cpu' or 'paper'")


class Encoder(nn.Module):
    """[B, 3, T, H, W] -> [B, latent_channels, t, h, w] (unquantised)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        pad, groups = cfg.pad_mode, cfg.norm_groups
        widths = [cfg.channels * m for m in cfg.channel_multipliers]
        kt = cfg.level_temporal_kernel(0)
        self.conv_in = CausalConv3d(3, widths[0], (kt, 3, 3), pad_mode=pad)
        blocks: list[nn.Module] = []
        ch = widths[0]
        for level, width in enumerate(widths):
            kt = cfg.level_temporal_kernel(level)
            for _ in range(cfg.num_res_blocks[level]):
                blocks.append(ResBlock3d(ch, width, groups, kt, pad))
                ch = width
            if level < len(widths) - 1:
                time_factor = 2 if cfg.temporal_downsample[level] else 1
                blocks.append(SpaceTimeDownsample(ch, ch, 2, time_factor, kt, pad))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = FrameGroupNorm(groups, ch)
        self.conv_out = CausalConv3d(ch, cfg.latent_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(x)))


class AdaptiveGroupNorm(nn.Module):
    """Per-frame GroupNorm whose scale and bias come from the quantised latents (StyleGAN-like).

    A causal conv maps the latents to a spatially varying scale and bias at latent
    resolution; these are resized causally to the feature's (T, H, W) (nearest in space,
    frame f <- latent frame ceil(f / s) in time, see models.causal.causal_resize). The conv
    starts at zero, so at initialisation this is a plain GroupNorm.
    """

    def __init__(
        self, channels: int, cond_channels: int, groups: int, temporal_kernel: int, pad: PadMode
    ):
        super().__init__()
        self.norm = FrameGroupNorm(groups, channels, affine=False)
        self.to_scale_bias = CausalConv3d(
            cond_channels, 2 * channels, (temporal_kernel, 3, 3), pad_mode=pad
        )
        nn.init.zeros_(self.to_scale_bias.weight)
        nn.init.zeros_(self.to_scale_bias.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:  # x [B, C, T, H, W], cond [B, Q, t, h, w]
        scale_bias = causal_resize(self.to_scale_bias(cond), x.shape[2:])
        scale, bias = scale_bias.chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + bias


class DecoderLevel(nn.Module):
    """One resolution of the decoder: adaptive norm, residual blocks, optional upsampler."""

    def __init__(
        self,
        width: int,
        cfg: TokenizerConfig,
        *,
        level: int,
        up_channels: int | None,
        time_factor: int = 1,
    ):
        super().__init__()
        kt, pad, groups = cfg.level_temporal_kernel(level), cfg.pad_mode, cfg.norm_groups
        self.adanorm = AdaptiveGroupNorm(width, cfg.latent_channels, groups, kt, pad)
        self.blocks = nn.Sequential(
            *[ResBlock3d(width, width, groups, kt, pad) for _ in range(cfg.num_res_blocks[level])]
        )
        self.upsample = (
            DepthToSpaceUpsample(width, up_channels, 2, time_factor)
            if up_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, codes: Tensor) -> Tensor:
        return self.upsample(self.blocks(self.adanorm(x, codes)))


class Decoder(nn.Module):
    """[B, latent_channels, t, h, w] quantised codes -> [B, 3, T, H, W] (unbounded)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        pad = cfg.pad_mode
        widths = [cfg.channels * m for m in cfg.channel_multipliers]
        kt = cfg.level_temporal_kernel(len(widths) - 1)
        self.conv_in = CausalConv3d(cfg.latent_channels, widths[-1], (kt, 3, 3), pad_mode=pad)
        levels = []
        for level in reversed(range(len(widths))):
            if level == 0:
                levels.append(DecoderLevel(widths[0], cfg, level=0, up_channels=None))
            else:  # the upsampler mirrors the encoder's downsampler into this level
                time_factor = 2 if cfg.temporal_downsample[level - 1] else 1
                levels.append(
                    DecoderLevel(
                        widths[level], cfg, level=level, up_channels=widths[level - 1],
                        time_factor=time_factor,
                    )
                )  # fmt: skip
        self.levels = nn.ModuleList(levels)
        self.norm_out = FrameGroupNorm(cfg.norm_groups, widths[0])
        kt = cfg.level_temporal_kernel(0)
        self.conv_out = CausalConv3d(widths[0], 3, (kt, 3, 3), pad_mode=pad)

    def forward(self, codes: Tensor) -> Tensor:
        x = self.conv_in(codes)
        for level in self.levels:
            x = level(x, codes)
        return self.conv_out(F.silu(self.norm_out(x)))


def pixels_to_unit(video: Tensor) -> Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1], the paper's input range."""
    return rearrange(video, "b t h w c -> b c t h w").float() / 127.5 - 1.0


def unit_to_pixels(x: Tensor) -> Tensor:
    """float [B, 3, T, H, W] (about [-1, 1]) -> uint8 [B, T, H, W, 3], clamped and rounded."""
    video = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(video, "b c t h w -> b t h w c")


class MagvitTokenizer(Pretrained, nn.Module):
    """Causal video tokenizer: video <-> int64 token grid [B, t, h, w]."""

    config_class = TokenizerConfig
    checkpoint_label = "tokenizer"

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.quantizer == "lfq":
            self.quantizer = LFQ(
                LFQConfig(
                    bits=config.bits,
                    entropy_group_size=config.entropy_group_size,
                    temperature=config.lfq_temperature,
                    commitment_weight=config.commitment_weight,
                )
            )
        else:
            self.quantizer = VectorQuantizer(
                VQConfig(
                    codebook_size=config.vq_codebook_size,
                    dim=config.vq_dim,
                    commitment_weight=config.commitment_weight,
                )
            )

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        self.config.latent_shape(*video.shape[2:])

    def forward(self, video: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """video: float [B, 3, T, H, W] in [-1, 1] -> (reconstruction, quantiser output)."""
        quantized = self.encode_to_codes(video)
        return self.decoder(quantized.codes), quantized

    def encode_to_codes(self, video: Tensor) -> QuantizerOutput:
        """float [B, 3, T, H, W] in [-1, 1] -> quantiser output (codes, indices, losses)."""
        self._check_video(video)
        return self.quantizer(self.encoder(video))

    def decode_codes(self, codes: Tensor) -> Tensor:
        """[B, latent_channels, t, h, w] -> float [B, 3, T, H, W] (about [-1, 1])."""
        return self.decoder(codes)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """uint8 [B, T, H, W, 3] -> int64 tokens [B, t, h, w] in [0, codebook_size)."""
        if video.dtype != torch.uint8 or video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(
                f"encode expects uint8 [B, T, H, W, 3], got {video.dtype} {tuple(video.shape)}"
            )
        x = pixels_to_unit(video)
        self._check_video(x)
        return self.quantizer.codes_to_indices(self.encoder(x))

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """int tokens [B, t, h, w] -> uint8 [B, T, H, W, 3], T = 1 + temporal_factor * (t - 1)."""
        if tokens.ndim != 4:
            raise ValueError(f"decode expects tokens [B, t, h, w], got {tuple(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.codebook_size:
            raise ValueError(f"token values must lie in [0, {self.codebook_size})")
        codes = self.quantizer.indices_to_codes(tokens).to(self.encoder.conv_in.weight.dtype)
        return unit_to_pixels(self.decoder(codes))
