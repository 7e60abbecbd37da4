"""Temporally causal 3D building blocks for the MAGVIT-v2 tokenizer.

Every block here keeps one invariant: output frame f depends only on input frames <= f
(or, for resampling blocks, on the input frames that map to output frames <= f). That is
what lets one set of weights tokenize a single image (T = 1) and the first frame of a video
identically.

Frame bookkeeping for a temporal factor s: a clip of 1 + s*t frames maps to 1 + t latent
frames; latent frame 0 sees input frame 0 only, latent frame j >= 1 sees input frames <= s*j.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

PadMode = Literal["replicate", "zeros"]


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value, value, value) if isinstance(value, int) else tuple(value)


class CausalConv3d(nn.Conv3d):
    """Conv3d that pads k_t - 1 frames before the clip and none after; 'same' padding in space.

    Temporal padding is "replicate" (copies of frame 0, so an image behaves like a static
    clip) or "zeros". Spatial padding is zeros. Spatial kernels must be odd. With temporal
    stride s and 1 + s*t input frames the output has 1 + t frames; output frame j sees input
    frames s*j - (k_t - 1) .. s*j.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        pad_mode: PadMode = "replicate",
    ):
        kt, kh, kw = _triple(kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"spatial kernel must be odd, got {(kh, kw)}")
        if pad_mode not in ("replicate", "zeros"):
            raise ValueError(f"pad_mode must be 'replicate' or 'zeros', got {pad_mode!r}")
        super().__init__(
            in_channels,
            out_channels,
            (kt, kh, kw),
            stride=_triple(stride),
            padding=(0, kh // 2, kw // 2),
        )
        self.time_pad = kt - 1
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W]
        if self.time_pad:
            # cat rather than F.pad: replication_pad3d's backward is several times slower
            first = x[:, :, :1] if self.pad_mode == "replicate" else torch.zeros_like(x[:, :, :1])
            x = torch.cat([first.expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return super().forward(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics over (channel group, H, W) of each frame, never across time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W]
        t = x.shape[2]
        x = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(x, "(b t) c h w -> b c t h w", t=t)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, causal conv) x 2 plus a skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        temporal_kernel: int = 3,
        pad_mode: PadMode = "replicate",
    ):
        super().__init__()
        kernel = (temporal_kernel, 3, 3)
        self.norm1 = FrameGroupNorm(groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel, pad_mode=pad_mode)
        self.norm2 = FrameGroupNorm(groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel, pad_mode=pad_mode)
        self.skip = (
            CausalConv3d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SpaceTimeDownsample(nn.Module):
    """Strided causal conv: H, W -> H / space_factor and 1 + s*t -> 1 + t frames (s = time_factor).

    Thanks to the causal padding the strided conv's first output frame is centred on input
    frame 0 alone, so frame 0 stays its own latent frame.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        space_factor: int = 2,
        time_factor: int = 1,
        temporal_kernel: int = 3,
        pad_mode: PadMode = "replicate",
    ):
        super().__init__()
        if time_factor > 1 and temporal_kernel < time_factor:
            raise ValueError("temporal_kernel must be >= time_factor so no frame is skipped")
        self.space_factor = space_factor
        self.time_factor = time_factor
        self.conv = CausalConv3d(
            in_channels,
            out_channels,
            (temporal_kernel, 3, 3),
            stride=(time_factor, space_factor, space_factor),
            pad_mode=pad_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, 1 + s*t, H, W]
        t, h, w = x.shape[2:]
        if (t - 1) % self.time_factor or h % self.space_factor or w % self.space_factor:
            raise ValueError(
                f"SpaceTimeDownsample needs 1 + {self.time_factor}*k frames and H, W divisible "
                f"by {self.space_factor}; got T={t}, H={h}, W={w}"
            )
        return self.conv(x)  # [B, C', 1 + t, H / sf, W / sf]


class DepthToSpaceUpsample(nn.Module):
    """1x1x1 conv to C * s_t * s_h * s_w channels, then pixel shuffle in time and space.

    The shuffle turns 1 + t frames into s*(1 + t); dropping the first s - 1 leaves 1 + s*t,
    so output frame f comes from input frame ceil(f / s) (frame 0 from frame 0 alone). The
    pointwise conv (a stride-2 transposed conv in disguise) keeps this cheap at the high
    resolutions; the residual blocks around it supply the spatial and temporal context.
    """

    def __init__(
        self, in_channels: int, out_channels: int, space_factor: int = 2, time_factor: int = 1
    ):
        super().__init__()
        self.space_factor = space_factor
        self.time_factor = time_factor
        self.conv = CausalConv3d(in_channels, out_channels * time_factor * space_factor**2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, 1 + t, H, W]
        x = rearrange(
            self.conv(x),
            "b (c st sh sw) t h w -> b c (t st) (h sh) (w sw)",
            st=self.time_factor,
            sh=self.space_factor,
            sw=self.space_factor,
        )
        return x[:, :, self.time_factor - 1 :]  # [B, C', 1 + s*t, H * sf, W * sf]


def causal_resize(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Resize [B, C, 1 + t, h, w] to (1 + s*t, H, W), keeping causality.

    Time: output frame f takes input frame ceil(f / s), the same frame mapping as
    DepthToSpaceUpsample, so a decoder feature and its conditioning stay aligned in time.
    Space: bilinear, so a map at latent resolution varies smoothly over the pixels of a
    token instead of stamping the token grid as blocks on every decoder level.
    """
    t_in, t_out = x.shape[2], size[0]
    if t_in == 1:
        factor = 1 if t_out == 1 else 0
    else:
        factor = (t_out - 1) // (t_in - 1) if (t_out - 1) % (t_in - 1) == 0 else 0
    if factor < 1:
        raise ValueError(f"cannot map {t_in} frames causally onto {t_out} frames")
    frame = torch.div(
        torch.arange(t_out, device=x.device) + factor - 1, factor, rounding_mode="floor"
    )
    x = x[:, :, frame]  # [B, C, 1 + s*t, h, w]
    if x.shape[-2:] == tuple(size[1:]):
        return x
    # trilinear at the output's own frame count: exact in time, bilinear in space
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)
